-- 0028 — an endpoint that is down costs one probe at a time, not a delivery per event.
--
-- Why: with every endpoint down, the delivery service still turned each event into a delivery
-- row per subscribed endpoint and tried each one on its own retry schedule. Measured with
-- scripts/bench/webhooks_drain.py (2,000 payments, 8 participants x 2 endpoints on a closed
-- loopback port, a 2-core machine at load ~4): while the payments drained (1.9 s) the fan-out
-- wrote ~3,900 delivery rows (every payment.dispatched event, once per endpoint: 6 index
-- entries each) and the service made ~410 failed attempts (an attempt row, a delivery update
-- and an endpoint update each), 0.7 s of the delivery process's CPU plus the server's work for
-- all of it, on the cores the payments use: payments drained at 0.54 of the no-webhook rate.
-- None of that work can help while the endpoint is down.
--
-- What: an endpoint whose last attempt failed as the endpoint's fault is *held*
-- (held_since): a connection error, a timeout, a 5xx, 408, 429, a redirect, anything but a
-- plain 4xx (a 4xx other than 408/429 is the receiver refusing that one event: the event keeps
-- its own retries and the endpoint carries on, so one bad event never stalls the others).
-- While an endpoint is held:
-- * the fan-out leaves its new events behind its cursor (webhook_endpoints.event_cursor: every
--   event up to it has its delivery or did not match); only when the endpoint has no pending
--   delivery at all does it make one, of the first matching event past the cursor: the probe;
-- * the claim hands out at most one of its deliveries at a time (none while one is leased),
--   the one due first: a probe, sent on its delivery's own backoff (5 s, 20 s, ... 12 h);
-- * the failure that holds it takes back the endpoint's deliveries nobody attempted yet
--   (pending, attempt_count 0, not leased, not a replay): they are deleted and the cursor steps
--   back before the oldest of them, so they are fanned out again, in order, once it recovers.
--   A delivery never attempted has no attempt rows and was never sent: nothing of its history
--   is lost, and its event stays where it always was, in payment_events.
-- The first success (any delivery of the endpoint, a probe or an operator's replay) releases
-- it: held_since is cleared, the endpoint's other pending deliveries waiting out a backoff are
-- due at once, and the next fan-out continues from the cursor in event order.
--
-- Marked failing: as before, after p_failing_after consecutive failed attempts (or a delivery
-- that ran out of attempts), where the events waiting behind a held endpoint's cursor count as
-- failed attempts too (each would have been one): a held endpoint sends few attempts, and a
-- busy one must still be marked failing as soon as before.
--
-- At least once, never lost: an event is either at or behind the cursor with its delivery
-- row, or past the cursor (payment_events, append-only) — the cursor only moves forward past
-- events that have their delivery, and back in the same transaction that deletes the
-- deliveries it steps back over (a crash or restart keeps both or neither). A replay is never
-- taken back. Operators still see the endpoint failing (consecutive failures, the failing
-- mark, its metric and the dashboard card: unchanged), and now also what waits behind the
-- cursors: webhook_health().events_waiting and endpoints_held (metrics
-- symphony_webhook_events_waiting / symphony_webhook_endpoints_held, the dashboard card), and
-- per endpoint held_since and events_waiting in ops_webhook_endpoints.
--
-- Restated from their newest definitions: fan_out_webhook_events and
-- complete_webhook_delivery (0018), claim_webhook_deliveries (0026_webhook_claim_by_key: its
-- per-key lease loop is kept); webhook_health and ops_webhook_endpoints (0018) gain result
-- columns, so they are dropped and created again with their 0018 grants.

SET LOCAL ROLE symphony_owner;

ALTER TABLE symphony.webhook_endpoints ADD COLUMN held_since timestamptz;

-- An endpoint's pending deliveries: the probe's pick, "is one leased?", the fan-out's
-- "anything pending?", the take-back and the release. A few rows per endpoint.
CREATE INDEX webhook_deliveries_pending_endpoint_idx
    ON symphony.webhook_deliveries (participant_id, endpoint_id, next_attempt_at)
    WHERE status = 'PENDING';
-- The held endpoints, where the claim looks for probes (the longest held first).
CREATE INDEX webhook_endpoints_held_idx
    ON symphony.webhook_endpoints (held_since)
    WHERE status = 'ENABLED' AND held_since IS NOT NULL;

-- the fan-out ------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION symphony.fan_out_webhook_events(
    p_endpoint_limit integer,
    p_event_limit    integer
) RETURNS TABLE (
    endpoints  integer,
    events     integer,
    deliveries integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_endpoint   record;
    v_last       bigint;
    v_seen       integer;
    v_created    integer;
    v_endpoints  integer := 0;
    v_events     integer := 0;
    v_deliveries integer := 0;
BEGIN
    IF p_endpoint_limit IS NULL OR p_endpoint_limit NOT BETWEEN 1 AND 10000
       OR p_event_limit IS NULL OR p_event_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'limits must be between 1 and 10000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'fan_out_webhook_events_limit';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);  -- see 0018 "Deliveries commit"
    FOR v_endpoint IN
        SELECT e.participant_id, e.endpoint_id, e.event_types, e.event_cursor,
               e.held_since IS NOT NULL AS held
          FROM webhook_endpoints e
          -- A held endpoint gets its next probe once nothing of it is pending. (A lateral
          -- ORDER BY ... LIMIT 1, not EXISTS, which would drop them: a probe of the pending
          -- index even where one endpoint holds most of the table.)
          LEFT JOIN LATERAL (
              SELECT true AS busy FROM webhook_deliveries d
               WHERE d.participant_id = e.participant_id AND d.endpoint_id = e.endpoint_id
                 AND d.status = 'PENDING'
               ORDER BY d.next_attempt_at
               LIMIT 1) p ON e.held_since IS NOT NULL
         WHERE e.status = 'ENABLED'
           AND p.busy IS NULL
           AND EXISTS (SELECT 1 FROM payment_events ev
                        WHERE ev.participant_id = e.participant_id
                          AND ev.event_seq > e.event_cursor)
         ORDER BY e.updated_at
         LIMIT p_endpoint_limit
           FOR UPDATE OF e SKIP LOCKED
    LOOP
        -- Up to p_event_limit events past the cursor; all the matching ones become deliveries,
        -- or, for a held endpoint, only the first (the probe), the cursor stopping at it.
        WITH batch AS (
            SELECT ev.event_seq, ev.event_id,
                   ev.event_type = ANY (v_endpoint.event_types) AS wanted
              FROM payment_events ev
             WHERE ev.participant_id = v_endpoint.participant_id
               AND ev.event_seq > v_endpoint.event_cursor
             ORDER BY ev.event_seq
             LIMIT p_event_limit
        ), cut AS (
            SELECT CASE WHEN v_endpoint.held
                        THEN coalesce(min(b.event_seq) FILTER (WHERE b.wanted),
                                      max(b.event_seq))
                        ELSE max(b.event_seq) END AS last
              FROM batch b
        ), made AS (
            INSERT INTO webhook_deliveries (participant_id, endpoint_id, event_seq, event_id)
            SELECT v_endpoint.participant_id, v_endpoint.endpoint_id, b.event_seq, b.event_id
              FROM batch b CROSS JOIN cut c
             WHERE b.wanted AND b.event_seq <= c.last
             ORDER BY b.event_seq
            ON CONFLICT (participant_id, endpoint_id, event_id) WHERE replay_of IS NULL
            DO NOTHING
            RETURNING 1
        )
        SELECT c.last, (SELECT count(*) FROM batch b WHERE b.event_seq <= c.last),
               (SELECT count(*) FROM made)
          INTO v_last, v_seen, v_created
          FROM cut c;
        IF v_last IS NOT NULL THEN
            UPDATE webhook_endpoints e SET event_cursor = v_last, updated_at = now()
             WHERE e.participant_id = v_endpoint.participant_id
               AND e.endpoint_id = v_endpoint.endpoint_id;
        END IF;
        v_endpoints := v_endpoints + 1;
        v_events := v_events + v_seen;
        v_deliveries := v_deliveries + v_created;
    END LOOP;
    RETURN QUERY SELECT v_endpoints, v_events, v_deliveries;
END
$$;

-- the claim --------------------------------------------------------------------------------------

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

-- the completion ---------------------------------------------------------------------------------

-- Restated from 0018. Changed: after the endpoint's health is updated, a failure that is the
-- endpoint's (see the header) holds it and takes back its deliveries nobody attempted yet; a
-- success releases a held endpoint (its deliveries waiting out a backoff are due now).
CREATE OR REPLACE FUNCTION symphony.complete_webhook_delivery(
    p_participant_id      text,
    p_delivery_id         uuid,
    p_lease_token         uuid,
    p_outcome             text,
    p_retry_after_seconds double precision,
    p_http_status         integer,
    p_latency_ms          integer,
    p_error_class         text,
    p_response_excerpt    text,
    p_started_at          timestamptz,
    p_failing_after       integer
) RETURNS TABLE (
    status                 text,
    attempt_no             integer,
    next_attempt_at        timestamptz,
    endpoint_failing       boolean,
    endpoint_became_failing boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row      webhook_deliveries%ROWTYPE;
    v_next     timestamptz;
    v_status   text;
    v_failing  timestamptz;
    v_was      timestamptz;
    v_held     timestamptz;
    v_back     bigint;
    v_waiting  bigint := 0;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('DELIVERED', 'RETRY', 'FAILED')
       OR (p_outcome = 'RETRY' AND (p_retry_after_seconds IS NULL
                                    OR p_retry_after_seconds NOT BETWEEN 0 AND 604800))
       OR p_failing_after IS NULL OR p_failing_after < 1 THEN
        RAISE EXCEPTION 'an outcome is DELIVERED, RETRY (with a delay of 0-604800 s) or FAILED'
            USING ERRCODE = 'SY074', CONSTRAINT = 'complete_webhook_delivery_outcome';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO v_row FROM webhook_deliveries d
     WHERE d.participant_id = p_participant_id AND d.delivery_id = p_delivery_id
       FOR UPDATE;
    IF NOT FOUND OR v_row.status <> 'PENDING' OR v_row.lease_token IS DISTINCT FROM p_lease_token
    THEN
        RAISE EXCEPTION 'the lease on this delivery is no longer held by the caller'
            USING ERRCODE = 'SY077', CONSTRAINT = 'complete_webhook_delivery_lease';
    END IF;
    v_status := CASE p_outcome WHEN 'DELIVERED' THEN 'DELIVERED'
                               WHEN 'FAILED' THEN 'FAILED' ELSE 'PENDING' END;
    v_next := CASE WHEN p_outcome = 'RETRY'
                   THEN now() + make_interval(secs => p_retry_after_seconds) END;
    INSERT INTO webhook_delivery_attempts
        (participant_id, delivery_id, attempt_no, endpoint_id, event_id, worker_id, started_at,
         outcome, http_status, latency_ms, error_class, response_excerpt, next_attempt_at)
    VALUES (p_participant_id, p_delivery_id, v_row.attempt_count, v_row.endpoint_id,
            v_row.event_id, v_row.claimed_by, p_started_at, p_outcome, p_http_status,
            p_latency_ms, p_error_class, p_response_excerpt, v_next);
    UPDATE webhook_deliveries d
       SET status = v_status,
           next_attempt_at = coalesce(v_next, d.next_attempt_at),
           finished_at = CASE WHEN v_status = 'PENDING' THEN NULL ELSE now() END,
           claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL
     WHERE d.participant_id = p_participant_id AND d.delivery_id = p_delivery_id;
    SELECT e.failing_since, e.held_since INTO v_was, v_held FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = v_row.endpoint_id
       FOR UPDATE;
    IF p_outcome = 'DELIVERED' THEN
        UPDATE webhook_endpoints e
           SET consecutive_failures = 0, failing_since = NULL, last_success_at = now(),
               held_since = NULL
         WHERE e.participant_id = p_participant_id AND e.endpoint_id = v_row.endpoint_id
        RETURNING e.failing_since INTO v_failing;
        IF v_held IS NOT NULL THEN
            -- Released: what waited out a backoff behind the probe is due now (the fan-out
            -- continues from the cursor on its own).
            UPDATE webhook_deliveries d SET next_attempt_at = now()
             WHERE d.participant_id = p_participant_id AND d.endpoint_id = v_row.endpoint_id
               AND d.status = 'PENDING' AND d.next_attempt_at > now()
               AND d.lease_token IS NULL;
        END IF;
    ELSE
        IF v_held IS NOT NULL OR p_http_status IS NULL OR p_http_status NOT BETWEEN 400 AND 499
           OR p_http_status IN (408, 429) THEN
            -- Held (or holding now): the events waiting behind its cursor would each have
            -- been a failed attempt; they count toward the failing mark, so a held endpoint
            -- is marked failing about as soon as when every event was tried.
            SELECT coalesce(greatest(0, (SELECT max(ev.event_seq) FROM payment_events ev
                                          WHERE ev.participant_id = p_participant_id)
                                         - e.event_cursor), 0)
              INTO v_waiting
              FROM webhook_endpoints e
             WHERE e.participant_id = p_participant_id AND e.endpoint_id = v_row.endpoint_id;
        END IF;
        UPDATE webhook_endpoints e
           SET consecutive_failures = e.consecutive_failures + 1,
               last_failure_at = now(),
               last_error_class = p_error_class,
               failing_since = CASE
                   WHEN e.failing_since IS NOT NULL THEN e.failing_since
                   WHEN e.consecutive_failures + 1 + v_waiting >= p_failing_after
                        OR p_outcome = 'FAILED'
                       THEN now()
               END,
               -- A plain 4xx is the receiver refusing this event, not the endpoint down.
               held_since = CASE
                   WHEN e.held_since IS NOT NULL THEN e.held_since
                   WHEN p_http_status BETWEEN 400 AND 499 AND p_http_status NOT IN (408, 429)
                       THEN NULL
                   ELSE now()
               END
         WHERE e.participant_id = p_participant_id AND e.endpoint_id = v_row.endpoint_id
        RETURNING e.failing_since, e.held_since INTO v_failing, v_held;
        IF v_held IS NOT NULL THEN
            -- Held: the deliveries nobody attempted yet go back behind the cursor (deleted,
            -- the cursor before the oldest of them), to be fanned out again after recovery.
            -- SKIP LOCKED: one a claim holds right now is sent and kept.
            WITH back AS (
                SELECT d.delivery_id FROM webhook_deliveries d
                 WHERE d.participant_id = p_participant_id
                   AND d.endpoint_id = v_row.endpoint_id
                   AND d.status = 'PENDING' AND d.attempt_count = 0
                   AND d.replay_of IS NULL AND d.lease_token IS NULL
                   FOR UPDATE SKIP LOCKED
            ), gone AS (
                DELETE FROM webhook_deliveries d
                 WHERE d.participant_id = p_participant_id
                   AND d.delivery_id IN (SELECT b.delivery_id FROM back b)
                RETURNING d.event_seq
            )
            SELECT min(g.event_seq) INTO v_back FROM gone g;
            IF v_back IS NOT NULL THEN
                UPDATE webhook_endpoints e
                   SET event_cursor = least(e.event_cursor, v_back - 1)
                 WHERE e.participant_id = p_participant_id
                   AND e.endpoint_id = v_row.endpoint_id;
            END IF;
        END IF;
    END IF;
    RETURN QUERY SELECT v_status, v_row.attempt_count, v_next, v_failing IS NOT NULL,
                        v_was IS NULL AND v_failing IS NOT NULL;
END
$$;

-- what operators see -----------------------------------------------------------------------------

DROP FUNCTION symphony.webhook_health();

-- The health summary the metrics and the dashboard show. New: endpoints_held (enabled
-- endpoints sending one probe at a time) and events_waiting (events past the cursors of
-- enabled endpoints, not yet made deliveries: all types, so an upper bound of what each
-- endpoint will be sent). One index probe per enabled endpoint.
CREATE FUNCTION symphony.webhook_health() RETURNS TABLE (
    endpoints_enabled    integer,
    endpoints_disabled   integer,
    endpoints_failing    integer,
    endpoints_held       integer,
    deliveries_pending   integer,
    deliveries_due       integer,
    oldest_due_at        timestamptz,
    deliveries_failed    integer,
    events_waiting       bigint,
    observed_at          timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT (SELECT count(*) FROM webhook_endpoints e WHERE e.status = 'ENABLED')::integer,
           (SELECT count(*) FROM webhook_endpoints e WHERE e.status = 'DISABLED')::integer,
           (SELECT count(*) FROM webhook_endpoints e
             WHERE e.status = 'ENABLED' AND e.failing_since IS NOT NULL)::integer,
           (SELECT count(*) FROM webhook_endpoints e
             WHERE e.status = 'ENABLED' AND e.held_since IS NOT NULL)::integer,
           (SELECT count(*) FROM webhook_deliveries d WHERE d.status = 'PENDING')::integer,
           (SELECT count(*) FROM webhook_deliveries d
             WHERE d.status = 'PENDING' AND d.next_attempt_at <= now())::integer,
           (SELECT min(d.next_attempt_at) FROM webhook_deliveries d
             WHERE d.status = 'PENDING' AND d.next_attempt_at <= now()),
           (SELECT count(*) FROM webhook_deliveries d WHERE d.status = 'FAILED')::integer,
           (SELECT coalesce(sum(greatest(0, w.last - e.event_cursor)), 0)::bigint
              FROM webhook_endpoints e
             CROSS JOIN LATERAL (
                 SELECT max(ev.event_seq) AS last FROM payment_events ev
                  WHERE ev.participant_id = e.participant_id) w
             WHERE e.status = 'ENABLED'),
           now()
$$;

DROP FUNCTION symphony.ops_webhook_endpoints(text, integer);

-- Restated from 0018 with held_since and events_waiting (as in webhook_health) per endpoint.
CREATE FUNCTION symphony.ops_webhook_endpoints(
    p_status text,
    p_limit  integer
) RETURNS TABLE (
    participant_id       text,
    endpoint_id          uuid,
    url                  text,
    event_types          text[],
    status               text,
    status_reason        text,
    consecutive_failures integer,
    failing_since        timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error_class     text,
    pending_deliveries   integer,
    created_at           timestamptz,
    held_since           timestamptz,
    events_waiting       bigint
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'ops_webhook_endpoints_limit';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('ENABLED', 'DISABLED', 'DELETED', 'FAILING') THEN
        RAISE EXCEPTION 'status must be ENABLED, DISABLED, DELETED or FAILING'
            USING ERRCODE = 'SY074', CONSTRAINT = 'ops_webhook_endpoints_status';
    END IF;
    RETURN QUERY
    SELECT e.participant_id, e.endpoint_id, e.url, e.event_types, e.status, e.status_reason,
           e.consecutive_failures, e.failing_since, e.last_success_at, e.last_failure_at,
           e.last_error_class,
           (SELECT count(*)::integer FROM webhook_deliveries d
             WHERE d.participant_id = e.participant_id AND d.endpoint_id = e.endpoint_id
               AND d.status = 'PENDING'),
           e.created_at,
           e.held_since,
           CASE WHEN e.status = 'DELETED' THEN 0::bigint ELSE
               (SELECT coalesce(greatest(0, max(ev.event_seq) - e.event_cursor), 0)::bigint
                  FROM payment_events ev WHERE ev.participant_id = e.participant_id) END
      FROM webhook_endpoints e
     WHERE CASE WHEN p_status IS NULL THEN e.status <> 'DELETED'
                WHEN p_status = 'FAILING' THEN e.status = 'ENABLED'
                                               AND e.failing_since IS NOT NULL
                ELSE e.status = p_status END
     -- Failing endpoints first, then the longest failing, then by age.
     ORDER BY (e.failing_since IS NULL), e.failing_since, e.created_at, e.endpoint_id
     LIMIT p_limit;
END
$$;

RESET ROLE;

REVOKE ALL ON FUNCTION symphony.webhook_health(), symphony.ops_webhook_endpoints(text, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_webhook_endpoints(text, integer)
    TO symphony_webhooks, symphony_control;
GRANT EXECUTE ON FUNCTION symphony.webhook_health()
    TO symphony_webhooks, symphony_control, symphony_delivery;
