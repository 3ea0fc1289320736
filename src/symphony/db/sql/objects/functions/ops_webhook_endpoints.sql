-- symphony.ops_webhook_endpoints: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0028_webhook_probe.sql.

-- Restated from 0018 with held_since and events_waiting (as in webhook_health) per endpoint.
CREATE OR REPLACE FUNCTION symphony.ops_webhook_endpoints(
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

REVOKE ALL ON FUNCTION symphony.ops_webhook_endpoints(text, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_webhook_endpoints(text, integer)
    TO symphony_control, symphony_webhooks;
