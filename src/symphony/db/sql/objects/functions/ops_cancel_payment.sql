-- symphony.ops_cancel_payment: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0023_cancellation.sql.

-- An operator's cancel through the API (symphony_operator): the acting token verified like
-- every operator action (live, OPERATOR kind and scope), named in the ledger row
-- ('operator:token:<id>') and in operator_actions with its label.
CREATE OR REPLACE FUNCTION symphony.ops_cancel_payment(
    p_token_id    uuid,
    p_secret_hash bytea,
    p_outbox_id   uuid,
    p_reason      text
) RETURNS TABLE (
    action_id      bigint,
    outbox_id      uuid,
    participant_id text,
    result         text,
    state          text,
    refusal        text,
    attempt_no     integer,
    canceled_at    timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor     record;
    v_result    record;
    v_action_id bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    IF p_outbox_id IS NULL THEN
        RAISE EXCEPTION 'a cancel names the payment'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_request';
    END IF;
    SELECT * INTO v_result
      FROM cancel_outbox_item(p_outbox_id, NULL, 'operator:token:' || v_actor.token_id::text,
                              'CANCELED_BY_OPERATOR', p_reason) c;
    INSERT INTO symphony_ops.operator_actions
        (action, outbox_id, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('CANCEL_PAYMENT', p_outbox_id, v_result.participant_id, p_outbox_id::text,
            v_actor.token_id, v_actor.label, p_reason,
            jsonb_build_object('result', v_result.result, 'state', v_result.state,
                               'refusal', v_result.refusal))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, v_result.outbox_id, v_result.participant_id,
                        v_result.result, v_result.state, v_result.refusal, v_result.attempt_no,
                        v_result.canceled_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.ops_cancel_payment(uuid, bytea, uuid, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_cancel_payment(uuid, bytea, uuid, text)
    TO symphony_operator;
