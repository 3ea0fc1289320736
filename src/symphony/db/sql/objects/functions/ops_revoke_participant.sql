-- symphony.ops_revoke_participant: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

-- revoke a participant (and its tokens) with an operator token. Revoking a participant that
-- is already revoked lost a race (or repeats one): SY062 and nothing is written.
CREATE OR REPLACE FUNCTION symphony.ops_revoke_participant(
    p_token_id       uuid,
    p_secret_hash    bytea,
    p_participant_id text,
    p_reason         text
) RETURNS TABLE (
    action_id      bigint,
    participant_id text,
    status         text,
    revoked_at     timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor     record;
    v_row       participants%ROWTYPE;
    v_action_id bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    SELECT * INTO v_row FROM participants pt
     WHERE pt.participant_id = p_participant_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no participant with this id'
            USING ERRCODE = 'SY034', CONSTRAINT = 'ops_revoke_participant_known';
    END IF;
    IF v_row.status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'the participant is already revoked'
            USING ERRCODE = 'SY062', CONSTRAINT = 'ops_revoke_participant_active';
    END IF;
    SELECT * INTO v_row FROM revoke_participant(p_participant_id);
    INSERT INTO symphony_ops.operator_actions
        (action, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('REVOKE_PARTICIPANT', p_participant_id, p_participant_id, v_actor.token_id,
            v_actor.label, p_reason, jsonb_build_object('status', v_row.status))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, v_row.participant_id, v_row.status, v_row.revoked_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.ops_revoke_participant(uuid, bytea, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_revoke_participant(uuid, bytea, text, text)
    TO symphony_operator;
