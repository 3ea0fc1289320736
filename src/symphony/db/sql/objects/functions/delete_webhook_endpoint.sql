-- symphony.delete_webhook_endpoint: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0018_webhooks.sql.

CREATE OR REPLACE FUNCTION symphony.delete_webhook_endpoint(
    p_participant_id text,
    p_endpoint_id    uuid
) RETURNS TABLE (
    endpoint_id          uuid,
    status               text,
    abandoned_deliveries integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_status    text;
    v_abandoned integer;
BEGIN
    SELECT e.status INTO v_status FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id
       FOR UPDATE;
    IF NOT FOUND OR v_status = 'DELETED' THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'delete_webhook_endpoint_known';
    END IF;
    UPDATE webhook_endpoints e
       SET status = 'DELETED', status_reason = 'deleted by the participant', updated_at = now()
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id;
    -- Its secrets stop signing at once.
    UPDATE webhook_endpoint_secrets s SET expires_at = now()
     WHERE s.participant_id = p_participant_id AND s.endpoint_id = p_endpoint_id
       AND (s.expires_at IS NULL OR s.expires_at > now());
    UPDATE webhook_deliveries d
       SET status = 'ABANDONED', finished_at = now(), lease_token = NULL,
           lease_expires_at = NULL, claimed_by = NULL
     WHERE d.participant_id = p_participant_id AND d.endpoint_id = p_endpoint_id
       AND d.status = 'PENDING';
    GET DIAGNOSTICS v_abandoned = ROW_COUNT;
    RETURN QUERY SELECT p_endpoint_id, 'DELETED'::text, v_abandoned;
END
$$;

REVOKE ALL ON FUNCTION symphony.delete_webhook_endpoint(text, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.delete_webhook_endpoint(text, uuid)
    TO symphony_webhooks;
