-- symphony.ops_revoke_token: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0014_operators.sql.

-- revoke a token (a participant's or an operator's, the acting one included) with an
-- operator token. A token already revoked: SY062, nothing written.
CREATE OR REPLACE FUNCTION symphony.ops_revoke_token(
    p_token_id        uuid,
    p_secret_hash     bytea,
    p_target_token_id uuid,
    p_reason          text
) RETURNS TABLE (
    action_id  bigint,
    token_id   uuid,
    revoked_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor     record;
    v_target    api_tokens%ROWTYPE;
    v_revoked   timestamptz;
    v_action_id bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    SELECT * INTO v_target FROM api_tokens t WHERE t.token_id = p_target_token_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no token with this id'
            USING ERRCODE = 'SY037', CONSTRAINT = 'ops_revoke_token_known';
    END IF;
    IF v_target.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'the token is already revoked'
            USING ERRCODE = 'SY062', CONSTRAINT = 'ops_revoke_token_live';
    END IF;
    SELECT r.revoked_at INTO v_revoked FROM revoke_api_token(p_target_token_id) r;
    INSERT INTO symphony_ops.operator_actions
        (action, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('REVOKE_TOKEN', v_target.participant_id, p_target_token_id::text, v_actor.token_id,
            v_actor.label, p_reason,
            jsonb_build_object('kind', v_target.kind, 'scope', v_target.scope,
                               'label', v_target.label))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, p_target_token_id, v_revoked;
END
$$;

REVOKE ALL ON FUNCTION symphony.ops_revoke_token(uuid, bytea, uuid, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_revoke_token(uuid, bytea, uuid, text)
    TO symphony_operator;
