-- symphony.fan_out_webhook_events: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0028_webhook_probe.sql.

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

REVOKE ALL ON FUNCTION symphony.fan_out_webhook_events(integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.fan_out_webhook_events(integer, integer)
    TO symphony_delivery;
