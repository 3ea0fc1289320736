-- symphony.claim_webhook_deliveries: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0028_webhook_probe.sql.

-- Restated from webhook_claim_by_key. Changed: the due deliveries of endpoints that are not
-- held, as before (the due index), then at most one delivery per held endpoint (its probe),
-- each such endpoint locked (SKIP LOCKED) and checked for a leased delivery in a statement of
-- its own, so two services never both send one of its deliveries.
CREATE OR REPLACE FUNCTION symphony.claim_webhook_deliveries(
    p_worker_id     text,
    p_limit         integer,
    p_lease_seconds integer
) RETURNS TABLE (
    participant_id     text,
    delivery_id        uuid,
    endpoint_id        uuid,
    url                text,
    event_seq          bigint,
    event_id           uuid,
    event_type         text,
    outbox_id          uuid,
    event_created_at   timestamptz,
    payload            jsonb,
    attempt_no         integer,
    lease_token        uuid,
    lease_expires_at   timestamptz,
    secret_ciphertexts bytea[],
    secret_key_ids     text[]
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_pids     text[];
    v_ids      uuid[];
    v_eps      uuid[];
    v_events   uuid[];
    v_counts   integer[];
    v_tokens   uuid[];
    v_claimers text[];
    v_held     record;
    v_probe    record;
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'claim_webhook_deliveries_worker';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'claim_webhook_deliveries_limit';
    END IF;
    IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND 3600 THEN
        RAISE EXCEPTION 'a delivery lease is 1 to 3600 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'claim_webhook_deliveries_lease';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    -- The due deliveries of endpoints that are not held, oldest first (the due index; the
    -- event order breaks ties, so one fan-out's deliveries go out in event order), locked;
    -- their keys as arrays, so every later statement reaches its rows by key.
    SELECT array_agg(x.participant_id), array_agg(x.delivery_id), array_agg(x.endpoint_id),
           array_agg(x.event_id), array_agg(x.attempt_count), array_agg(x.lease_token),
           array_agg(x.claimed_by)
      INTO v_pids, v_ids, v_eps, v_events, v_counts, v_tokens, v_claimers
      FROM (SELECT d.participant_id, d.delivery_id, d.endpoint_id, d.event_id,
                   d.attempt_count, d.lease_token, d.claimed_by
              FROM webhook_deliveries d
              JOIN webhook_endpoints e
                ON e.participant_id = d.participant_id AND e.endpoint_id = d.endpoint_id
             WHERE d.status = 'PENDING'
               AND d.next_attempt_at <= now()
               AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
               AND e.status = 'ENABLED'
               AND e.held_since IS NULL
             ORDER BY d.next_attempt_at, d.event_seq
             LIMIT p_limit
               FOR UPDATE OF d SKIP LOCKED) x;
    v_pids := coalesce(v_pids, '{}');
    v_ids := coalesce(v_ids, '{}');
    v_eps := coalesce(v_eps, '{}');
    v_events := coalesce(v_events, '{}');
    v_counts := coalesce(v_counts, '{}');
    v_tokens := coalesce(v_tokens, '{}');
    v_claimers := coalesce(v_claimers, '{}');
    -- The probes: one due delivery per held endpoint with none leased. The endpoint row is
    -- locked first (SKIP LOCKED: another claim holds it, or a completion); the lease check
    -- runs after, in its own statement, so it sees a lease another claim committed meanwhile.
    IF cardinality(v_ids) < p_limit THEN
        FOR v_held IN
            SELECT e.participant_id, e.endpoint_id
              FROM webhook_endpoints e
             WHERE e.status = 'ENABLED' AND e.held_since IS NOT NULL
               AND EXISTS (SELECT 1 FROM webhook_deliveries d
                            WHERE d.participant_id = e.participant_id
                              AND d.endpoint_id = e.endpoint_id
                              AND d.status = 'PENDING' AND d.next_attempt_at <= now())
             ORDER BY e.held_since
             LIMIT p_limit - cardinality(v_ids)
               FOR UPDATE OF e SKIP LOCKED
        LOOP
            SELECT d.participant_id, d.delivery_id, d.endpoint_id, d.event_id,
                   d.attempt_count, d.lease_token, d.claimed_by
              INTO v_probe
              FROM webhook_deliveries d
             WHERE d.participant_id = v_held.participant_id
               AND d.endpoint_id = v_held.endpoint_id
               AND d.status = 'PENDING' AND d.next_attempt_at <= now()
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries l
                                WHERE l.participant_id = v_held.participant_id
                                  AND l.endpoint_id = v_held.endpoint_id
                                  AND l.status = 'PENDING'
                                  AND l.lease_expires_at > now())
             ORDER BY d.next_attempt_at, d.event_seq
             LIMIT 1
               FOR UPDATE OF d SKIP LOCKED;
            IF FOUND THEN
                v_pids := v_pids || v_probe.participant_id;
                v_ids := v_ids || v_probe.delivery_id;
                v_eps := v_eps || v_probe.endpoint_id;
                v_events := v_events || v_probe.event_id;
                v_counts := v_counts || v_probe.attempt_count;
                v_tokens := v_tokens || v_probe.lease_token;
                v_claimers := v_claimers || v_probe.claimed_by;
            END IF;
        END LOOP;
    END IF;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    -- A lease that expired: its attempt was lost with its service; recorded before the
    -- delivery is handed out again.
    INSERT INTO webhook_delivery_attempts
        (participant_id, delivery_id, attempt_no, endpoint_id, event_id, worker_id, outcome,
         error_class)
    SELECT u.pid, u.id, u.n, u.ep, u.ev, u.who, 'LEASE_EXPIRED', 'lease_expired'
      FROM unnest(v_pids, v_ids, v_eps, v_events, v_counts, v_tokens, v_claimers)
               AS u(pid, id, ep, ev, n, tok, who)
     WHERE u.tok IS NOT NULL AND u.n >= 1;
    -- Each claimed delivery leased by its primary key, one statement per key (see
    -- webhook_claim_by_key), in the claim's order.
    FOR i IN 1 .. cardinality(v_ids) LOOP
        RETURN QUERY
        WITH leased AS (
            UPDATE webhook_deliveries d
               SET attempt_count = d.attempt_count + 1,
                   claimed_by = p_worker_id,
                   lease_token = gen_random_uuid(),
                   lease_expires_at = now() + make_interval(secs => p_lease_seconds)
             WHERE d.participant_id = v_pids[i] AND d.delivery_id = v_ids[i]
            RETURNING d.participant_id, d.delivery_id, d.endpoint_id, d.event_seq, d.event_id,
                      d.attempt_count, d.lease_token, d.lease_expires_at
        )
        SELECT l.participant_id, l.delivery_id, l.endpoint_id, e.url, l.event_seq, l.event_id,
               ev.event_type, ev.outbox_id, ev.created_at, ev.payload, l.attempt_count,
               l.lease_token, l.lease_expires_at, s.ciphertexts, s.key_ids
          FROM leased l
          -- LIMIT 1 keeps each lookup a probe of its key (never a join over the whole table).
          CROSS JOIN LATERAL (
              SELECT x.url FROM webhook_endpoints x
               WHERE x.participant_id = l.participant_id AND x.endpoint_id = l.endpoint_id
               LIMIT 1) e
          CROSS JOIN LATERAL (
              SELECT x.event_type, x.outbox_id, x.created_at, x.payload FROM payment_events x
               WHERE x.participant_id = l.participant_id AND x.event_seq = l.event_seq
               LIMIT 1) ev
          CROSS JOIN LATERAL (
              SELECT array_agg(x.secret_ciphertext ORDER BY x.secret_no DESC) AS ciphertexts,
                     array_agg(x.key_id ORDER BY x.secret_no DESC) AS key_ids
                FROM webhook_endpoint_secrets x
               WHERE x.participant_id = l.participant_id AND x.endpoint_id = l.endpoint_id
                 AND (x.expires_at IS NULL OR x.expires_at > now())
          ) s;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION symphony.claim_webhook_deliveries(text, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.claim_webhook_deliveries(text, integer, integer)
    TO symphony_delivery;
