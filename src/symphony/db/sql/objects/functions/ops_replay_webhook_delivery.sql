-- symphony.ops_replay_webhook_delivery: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0024_ops_replay_webhook_delivery.sql.

-- The operator API's replay: the acting token verified by the database.
CREATE OR REPLACE FUNCTION symphony.ops_replay_webhook_delivery(
    p_token_id    uuid,
    p_secret_hash bytea,
    p_delivery_id uuid,
    p_reason      text
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
DECLARE
    v_actor record;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    RETURN QUERY
    SELECT * FROM record_webhook_replay(p_delivery_id, v_actor.token_id, v_actor.label,
                                        'operator:token:' || v_actor.token_id::text, p_reason);
END
$$;

REVOKE ALL ON FUNCTION symphony.ops_replay_webhook_delivery(uuid, bytea, uuid, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_replay_webhook_delivery(uuid, bytea, uuid, text)
    TO symphony_operator;
