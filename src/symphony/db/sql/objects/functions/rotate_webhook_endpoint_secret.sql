-- symphony.rotate_webhook_endpoint_secret: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0018_webhooks.sql.

-- A new secret, live at once; the ones live before stay live for p_overlap_seconds more
-- (0-604800), so receivers can switch without dropping a delivery.
CREATE OR REPLACE FUNCTION symphony.rotate_webhook_endpoint_secret(
    p_participant_id    text,
    p_endpoint_id       uuid,
    p_secret_ciphertext bytea,
    p_key_id            text,
    p_overlap_seconds   integer
) RETURNS TABLE (
    endpoint_id      uuid,
    secret_no        integer,
    previous_expires timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_status  text;
    v_next    integer;
    v_expires timestamptz;
BEGIN
    IF p_overlap_seconds IS NULL OR p_overlap_seconds NOT BETWEEN 0 AND 604800 THEN
        RAISE EXCEPTION 'the overlap is 0 to 604800 seconds (7 days)'
            USING ERRCODE = 'SY074', CONSTRAINT = 'rotate_webhook_endpoint_secret_overlap';
    END IF;
    PERFORM webhook_check_secret(p_secret_ciphertext, p_key_id);
    SELECT e.status INTO v_status FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id
       FOR UPDATE;
    IF NOT FOUND OR v_status = 'DELETED' THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'rotate_webhook_endpoint_secret_known';
    END IF;
    v_expires := now() + make_interval(secs => p_overlap_seconds);
    UPDATE webhook_endpoint_secrets s
       SET expires_at = least(coalesce(s.expires_at, 'infinity'::timestamptz), v_expires)
     WHERE s.participant_id = p_participant_id AND s.endpoint_id = p_endpoint_id
       AND (s.expires_at IS NULL OR s.expires_at > now());
    SELECT coalesce(max(s.secret_no), 0) + 1 INTO v_next FROM webhook_endpoint_secrets s
     WHERE s.participant_id = p_participant_id AND s.endpoint_id = p_endpoint_id;
    INSERT INTO webhook_endpoint_secrets
        (participant_id, endpoint_id, secret_no, secret_ciphertext, key_id)
    VALUES (p_participant_id, p_endpoint_id, v_next, p_secret_ciphertext, p_key_id);
    UPDATE webhook_endpoints e SET updated_at = now()
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id;
    RETURN QUERY SELECT p_endpoint_id, v_next, v_expires;
END
$$;

REVOKE ALL ON FUNCTION symphony.rotate_webhook_endpoint_secret(text, uuid, bytea, text, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.rotate_webhook_endpoint_secret(text, uuid, bytea, text, integer)
    TO symphony_webhooks;
