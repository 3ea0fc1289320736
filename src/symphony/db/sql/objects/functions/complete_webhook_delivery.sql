-- symphony.complete_webhook_delivery: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0028_webhook_probe.sql.

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

REVOKE ALL ON FUNCTION symphony.complete_webhook_delivery(text, uuid, uuid, text, double precision, integer, integer, text, text, timestamp with time zone, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.complete_webhook_delivery(text, uuid, uuid, text, double precision, integer, integer, text, text, timestamp with time zone, integer)
    TO symphony_delivery;
