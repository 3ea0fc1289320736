-- symphony.set_webhook_endpoint_enabled: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0018_webhooks.sql.

CREATE OR REPLACE FUNCTION symphony.set_webhook_endpoint_enabled(
    p_endpoint_id uuid,
    p_enabled     boolean,
    p_reason      text
) RETURNS TABLE (
    participant_id text,
    endpoint_id    uuid,
    status         text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row webhook_endpoints%ROWTYPE;
BEGIN
    IF p_enabled IS NULL OR p_reason IS NULL OR char_length(p_reason) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'a reason of 1-500 characters without control characters is required'
            USING ERRCODE = 'SY074', CONSTRAINT = 'set_webhook_endpoint_enabled_reason';
    END IF;
    SELECT * INTO v_row FROM webhook_endpoints e WHERE e.endpoint_id = p_endpoint_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'set_webhook_endpoint_enabled_known';
    END IF;
    IF v_row.status = 'DELETED' THEN
        RAISE EXCEPTION 'the webhook endpoint was deleted'
            USING ERRCODE = 'SY075', CONSTRAINT = 'set_webhook_endpoint_enabled_deleted';
    END IF;
    -- Enabling starts a fresh health record: the operator says the receiver is fixed.
    UPDATE webhook_endpoints e
       SET status = CASE WHEN p_enabled THEN 'ENABLED' ELSE 'DISABLED' END,
           status_reason = p_reason,
           consecutive_failures = CASE WHEN p_enabled THEN 0 ELSE e.consecutive_failures END,
           failing_since = CASE WHEN p_enabled THEN NULL ELSE e.failing_since END,
           updated_at = now()
     WHERE e.participant_id = v_row.participant_id AND e.endpoint_id = p_endpoint_id;
    RETURN QUERY SELECT v_row.participant_id, p_endpoint_id,
                        CASE WHEN p_enabled THEN 'ENABLED' ELSE 'DISABLED' END;
END
$$;

REVOKE ALL ON FUNCTION symphony.set_webhook_endpoint_enabled(uuid, boolean, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.set_webhook_endpoint_enabled(uuid, boolean, text)
    TO symphony_control, symphony_webhooks;
