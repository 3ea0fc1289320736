-- symphony.ops_resolve_review: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0014_operators.sql.

-- resolve a review item with an operator token: the rail's confirmed outcome (DISPATCHED with
-- its transaction id, or FAILED), through resolve_outbox_review (0006) so the ledger, the
-- decision record and the audit's review rules are exactly those of the command line. The
-- decision names the token (decided_by 'token:<id>'); the action record adds its label.
CREATE OR REPLACE FUNCTION symphony.ops_resolve_review(
    p_token_id            uuid,
    p_secret_hash         bytea,
    p_outbox_id           uuid,
    p_decision            text,
    p_reason              text,
    p_rail_transaction_id text DEFAULT NULL
) RETURNS TABLE (
    action_id  bigint,
    outbox_id  uuid,
    decision   text,
    state      text,
    attempt_no integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor       record;
    v_result      record;
    v_participant text;
    v_action_id   bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    IF p_decision IS NULL OR p_decision NOT IN ('DISPATCHED', 'FAILED') THEN
        RAISE EXCEPTION 'an operator resolves a review with the rail''s outcome: DISPATCHED or '
                        'FAILED'
            USING ERRCODE = 'SY041', CONSTRAINT = 'ops_resolve_review_decision';
    END IF;
    SELECT * INTO v_result
      FROM resolve_outbox_review(p_outbox_id, p_decision, 'token:' || v_actor.token_id::text,
                                 p_reason, p_rail_transaction_id) r;
    SELECT r.participant_id INTO v_participant
      FROM payment_instruction_registry r WHERE r.outbox_id = p_outbox_id;
    INSERT INTO symphony_ops.operator_actions
        (action, outbox_id, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('RESOLVE_REVIEW', p_outbox_id, v_participant, p_outbox_id::text, v_actor.token_id,
            v_actor.label, p_reason,
            jsonb_build_object('decision', p_decision,
                               'rail_transaction_id', p_rail_transaction_id,
                               'state', v_result.state, 'attempt_no', v_result.attempt_no))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, p_outbox_id, p_decision, v_result.state::text,
                        v_result.attempt_no::integer;
END
$$;

REVOKE ALL ON FUNCTION symphony.ops_resolve_review(uuid, bytea, uuid, text, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_resolve_review(uuid, bytea, uuid, text, text, text)
    TO symphony_operator;
