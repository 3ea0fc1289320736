-- symphony.cancel_payment_by_operator: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0023_cancellation.sql.

-- An operator's cancel from the command line (control): any participant's payment (a revoked
-- participant's accepted payments go on unless an operator cancels them), naming the operator,
-- with a reason; recorded in operator_actions.
CREATE OR REPLACE FUNCTION symphony.cancel_payment_by_operator(
    p_outbox_id   uuid,
    p_canceled_by text,
    p_reason      text
) RETURNS TABLE (
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
    v_result record;
BEGIN
    IF p_outbox_id IS NULL OR p_canceled_by IS NULL
       OR p_canceled_by !~ '^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$' THEN
        RAISE EXCEPTION 'canceled_by names the operator: 1-64 letters, digits, ".", "_", "@", '
                        '":" or "-"'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_canceled_by';
    END IF;
    PERFORM check_operator_reason(p_reason);
    SELECT * INTO v_result
      FROM cancel_outbox_item(p_outbox_id, NULL, 'operator:' || p_canceled_by,
                              'CANCELED_BY_OPERATOR', p_reason) c;
    INSERT INTO symphony_ops.operator_actions
        (action, outbox_id, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('CANCEL_PAYMENT', p_outbox_id, v_result.participant_id, p_outbox_id::text, NULL,
            p_canceled_by, p_reason,
            jsonb_build_object('result', v_result.result, 'state', v_result.state,
                               'refusal', v_result.refusal));
    RETURN QUERY SELECT v_result.outbox_id, v_result.participant_id, v_result.result,
                        v_result.state, v_result.refusal, v_result.attempt_no,
                        v_result.canceled_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.cancel_payment_by_operator(uuid, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.cancel_payment_by_operator(uuid, text, text)
    TO symphony_control;
