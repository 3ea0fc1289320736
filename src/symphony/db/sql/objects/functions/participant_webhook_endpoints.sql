-- symphony.participant_webhook_endpoints: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0018_webhooks.sql.

-- A participant's endpoints (deleted ones left out), oldest first, with their health. No
-- secret, no cursor.
CREATE OR REPLACE FUNCTION symphony.participant_webhook_endpoints(
    p_participant_id text
) RETURNS TABLE (
    endpoint_id          uuid,
    url                  text,
    event_types          text[],
    description          text,
    status               text,
    consecutive_failures integer,
    failing_since        timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error_class     text,
    live_secrets         integer,
    created_at           timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT e.endpoint_id, e.url, e.event_types, e.description, e.status,
           e.consecutive_failures, e.failing_since, e.last_success_at, e.last_failure_at,
           e.last_error_class,
           (SELECT count(*)::integer FROM webhook_endpoint_secrets s
             WHERE s.participant_id = e.participant_id AND s.endpoint_id = e.endpoint_id
               AND (s.expires_at IS NULL OR s.expires_at > now())),
           e.created_at
      FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.status <> 'DELETED'
     ORDER BY e.created_at, e.endpoint_id
$$;

REVOKE ALL ON FUNCTION symphony.participant_webhook_endpoints(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.participant_webhook_endpoints(text)
    TO symphony_webhooks;
