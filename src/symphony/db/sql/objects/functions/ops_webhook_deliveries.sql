-- symphony.ops_webhook_deliveries: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0018_webhooks.sql.

-- An endpoint's deliveries, newest first, with their last attempt.
CREATE OR REPLACE FUNCTION symphony.ops_webhook_deliveries(
    p_endpoint_id uuid,
    p_limit       integer
) RETURNS TABLE (
    delivery_id      uuid,
    participant_id   text,
    endpoint_id      uuid,
    event_id         uuid,
    event_seq        bigint,
    status           text,
    attempt_count    integer,
    next_attempt_at  timestamptz,
    replay_of        uuid,
    created_at       timestamptz,
    finished_at      timestamptz,
    last_http_status integer,
    last_error_class text,
    last_attempt_at  timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_participant text;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'ops_webhook_deliveries_limit';
    END IF;
    SELECT e.participant_id INTO v_participant FROM webhook_endpoints e
     WHERE e.endpoint_id = p_endpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'ops_webhook_deliveries_known';
    END IF;
    RETURN QUERY
    SELECT d.delivery_id, d.participant_id, d.endpoint_id, d.event_id, d.event_seq, d.status,
           d.attempt_count, CASE WHEN d.status = 'PENDING' THEN d.next_attempt_at END,
           d.replay_of, d.created_at, d.finished_at, a.http_status, a.error_class, a.recorded_at
      FROM webhook_deliveries d
      LEFT JOIN LATERAL (
          SELECT x.http_status, x.error_class, x.recorded_at
            FROM webhook_delivery_attempts x
           WHERE x.participant_id = d.participant_id AND x.delivery_id = d.delivery_id
           ORDER BY x.attempt_no DESC
           LIMIT 1
      ) a ON true
     WHERE d.participant_id = v_participant AND d.endpoint_id = p_endpoint_id
     ORDER BY d.created_at DESC, d.delivery_id
     LIMIT p_limit;
END
$$;

REVOKE ALL ON FUNCTION symphony.ops_webhook_deliveries(uuid, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_webhook_deliveries(uuid, integer)
    TO symphony_control, symphony_webhooks;
