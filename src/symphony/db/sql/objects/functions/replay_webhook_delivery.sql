-- symphony.replay_webhook_delivery: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0018_webhooks.sql.

-- Send one delivery's event again, as a delivery of its own (the original keeps its history).
CREATE OR REPLACE FUNCTION symphony.replay_webhook_delivery(
    p_delivery_id  uuid,
    p_requested_by text
) RETURNS TABLE (
    delivery_id    uuid,
    participant_id text,
    endpoint_id    uuid,
    event_id       uuid,
    replay_of      uuid
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row    webhook_deliveries%ROWTYPE;
    v_status text;
BEGIN
    IF p_requested_by IS NULL OR char_length(p_requested_by) NOT BETWEEN 1 AND 200
       OR p_requested_by ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'who asks for the replay: 1-200 characters without control characters'
            USING ERRCODE = 'SY074', CONSTRAINT = 'replay_webhook_delivery_requester';
    END IF;
    SELECT * INTO v_row FROM webhook_deliveries d WHERE d.delivery_id = p_delivery_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook delivery with this id'
            USING ERRCODE = 'SY076', CONSTRAINT = 'replay_webhook_delivery_known';
    END IF;
    SELECT e.status INTO v_status FROM webhook_endpoints e
     WHERE e.participant_id = v_row.participant_id AND e.endpoint_id = v_row.endpoint_id;
    IF v_status = 'DELETED' THEN
        RAISE EXCEPTION 'the webhook endpoint was deleted'
            USING ERRCODE = 'SY075', CONSTRAINT = 'replay_webhook_delivery_deleted';
    END IF;
    RETURN QUERY
    INSERT INTO webhook_deliveries AS d
        (participant_id, endpoint_id, event_seq, event_id, replay_of, replay_requested_by)
    VALUES (v_row.participant_id, v_row.endpoint_id, v_row.event_seq, v_row.event_id,
            coalesce(v_row.replay_of, v_row.delivery_id), p_requested_by)
    RETURNING d.delivery_id, d.participant_id, d.endpoint_id, d.event_id, d.replay_of;
END
$$;

REVOKE ALL ON FUNCTION symphony.replay_webhook_delivery(uuid, text)
    FROM PUBLIC;
