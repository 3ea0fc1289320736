-- 0026 — the webhook claim leases each delivery by its primary key on every version.
--
-- Why: claim_webhook_deliveries (0018) picks the due deliveries (the due index, FOR UPDATE
-- SKIP LOCKED) and then leases them with
--     UPDATE webhook_deliveries d ... WHERE d.delivery_id = ANY (v_ids)
--                                     AND d.participant_id = ANY (v_pids)
-- PostgreSQL 17 and newer cost that as one index descent per claimed key and probe the
-- primary key. PostgreSQL 15 and 16 cost two = ANY conditions on the key's two columns as
-- every combination of the two arrays (32 claimed deliveries: 1,024 descents), so 15 plans the
-- lease as a sequential scan of the whole table already at 1,500 deliveries
-- (tests/unit/test_webhook_query_plans.py, which scripts/pg_versions.py now runs on 15). The
-- two conditions also said less than meant: any claimed participant with any claimed
-- delivery id, where the claim means exactly the pairs it locked.
--
-- Tried first, and not enough: a join on the claimed pairs, FROM unnest(v_pids, v_ids). On a
-- small table (1,500 deliveries, 30 claimed) 15 then costs a hash join over a sequential scan
-- (79) below 30 key probes, and so would any version: which join probes the key is the
-- planner's choice, made from the table's size. A single-row statement leaves no choice.
--
-- How: the claim still selects and locks its due deliveries in one statement (the due index,
-- FOR UPDATE SKIP LOCKED), records the expired leases in one insert, and then leases each
-- claimed delivery with one UPDATE by its primary key (participant_id, delivery_id): a probe
-- of the key on every version and at every size. The claim hands out at most p_limit (1-1000;
-- the delivery service asks for 32 by default) deliveries, each locked already, so the loop is
-- bounded and waits for nothing; rows come back in the claim's order (oldest due first).
-- Everything else is 0018's definition unchanged (arguments, checks, result columns, the
-- lease-expired record, the lookups of the endpoint, event and secrets); CREATE OR REPLACE
-- keeps its owner and grants.
--
-- Replaced: symphony.claim_webhook_deliveries(text, integer, integer), defined in 0018 only
-- (the newest definition).

SET LOCAL ROLE symphony_owner;

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
    -- The due deliveries, oldest first (the due index), locked; their keys as arrays, so
    -- every later statement reaches its rows by key, whatever the tables' sizes.
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
             ORDER BY d.next_attempt_at
             LIMIT p_limit
               FOR UPDATE OF d SKIP LOCKED) x;
    IF v_ids IS NULL THEN
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
    -- Each claimed delivery leased by its primary key, one statement per key (see the header),
    -- in the claim's order (oldest due first).
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

RESET ROLE;
