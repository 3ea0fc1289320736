-- symphony.replay_webhook_delivery_by_operator: the running definition, applied again whenever
-- this file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0024_ops_replay_webhook_delivery.sql.

-- The command line's replay (control): the operator names themself, as for `review resolve`.
CREATE OR REPLACE FUNCTION symphony.replay_webhook_delivery_by_operator(
    p_delivery_id  uuid,
    p_requested_by text,
    p_reason       text
) RETURNS TABLE (
    action_id       bigint,
    result          text,
    delivery_id     uuid,
    replay_of       uuid,
    participant_id  text,
    endpoint_id     uuid,
    event_id        uuid,
    outbox_id       uuid,
    status          text,
    endpoint_status text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    -- The name must be one replay_webhook_delivery accepts before anything is locked.
    IF p_requested_by IS NULL OR char_length(p_requested_by) NOT BETWEEN 1 AND 200
       OR p_requested_by ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'who asks for the replay: 1-200 characters without control characters'
            USING ERRCODE = 'SY074', CONSTRAINT = 'replay_webhook_delivery_requester';
    END IF;
    RETURN QUERY
    SELECT * FROM record_webhook_replay(p_delivery_id, NULL, p_requested_by, p_requested_by,
                                        p_reason);
END
$$;

REVOKE ALL ON FUNCTION symphony.replay_webhook_delivery_by_operator(uuid, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.replay_webhook_delivery_by_operator(uuid, text, text)
    TO symphony_control;
