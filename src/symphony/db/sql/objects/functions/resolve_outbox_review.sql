-- symphony.resolve_outbox_review: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0006_money_safety.sql.

-- resolve: an operator records the rail's confirmed outcome of an item under review.
-- DISPATCHED and FAILED end the item in the ledger through the grammar every item follows
-- (I5): a DISPATCHING row for the review, then the terminal row, both naming the operator
-- (worker_id 'review:<who>') and written by the control login (recorded_by). RETRY puts the
-- item back in the queue (it is still looked up first). Every decision is kept in
-- outbox_review_decisions.
CREATE OR REPLACE FUNCTION symphony.resolve_outbox_review(
    p_outbox_id           uuid,
    p_decision            text,
    p_decided_by          text,
    p_reason              text,
    p_rail_transaction_id text DEFAULT NULL
) RETURNS TABLE (
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
    v_item  payment_outbox_pending%ROWTYPE;
    v_token uuid := gen_random_uuid();
    v_who   text;
BEGIN
    IF p_decision IS NULL OR p_decision NOT IN ('DISPATCHED', 'FAILED', 'RETRY') THEN
        RAISE EXCEPTION 'a review decision is DISPATCHED, FAILED or RETRY'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_decision';
    END IF;
    IF p_decided_by IS NULL OR p_decided_by !~ '^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$' THEN
        RAISE EXCEPTION 'decided_by names the operator: 1-64 letters, digits, ".", "_", "@", '
                        '":" or "-"'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_decided_by';
    END IF;
    IF p_reason IS NULL OR char_length(btrim(p_reason)) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\x01-\x08\x0B\x0C\x0E-\x1F\x7F]' THEN
        RAISE EXCEPTION 'a review decision needs a reason of 1-500 printable characters'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_reason';
    END IF;
    IF p_decision = 'DISPATCHED' AND (p_rail_transaction_id IS NULL
       OR p_rail_transaction_id !~ '^[!-~]{1,200}$') THEN
        RAISE EXCEPTION 'DISPATCHED needs the rail''s transaction id (1-200 printable ASCII)'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_rail_transaction_id';
    END IF;

    SELECT * INTO v_item FROM payment_outbox_pending p
     WHERE p.outbox_id = p_outbox_id FOR UPDATE;
    IF NOT FOUND OR v_item.review_reason IS NULL THEN
        RAISE EXCEPTION 'the outbox item is not under review'
            USING ERRCODE = 'SY040', CONSTRAINT = 'review_not_under_review';
    END IF;

    INSERT INTO outbox_review_decisions
        (outbox_id, decision, decided_by, reason, rail_transaction_id, review_reason)
    VALUES (p_outbox_id, p_decision, p_decided_by, p_reason, p_rail_transaction_id,
            v_item.review_reason);

    IF p_decision = 'RETRY' THEN
        UPDATE payment_outbox_pending p
           SET review_reason = NULL, review_since = NULL, next_attempt_at = clock_timestamp()
         WHERE p.outbox_id = p_outbox_id;
        PERFORM pg_notify('symphony_outbox_pending', '');
        RETURN QUERY SELECT p_outbox_id, p_decision, 'PENDING'::text, v_item.last_attempt_no;
        RETURN;
    END IF;

    v_who := 'review:' || p_decided_by;
    INSERT INTO payment_outbox_attempts
        (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail)
    VALUES (p_outbox_id, v_item.last_attempt_no + 1, 'DISPATCHING', v_who, v_token,
            'OPERATOR_REVIEW', left('review of ' || v_item.review_reason, 1000));
    INSERT INTO payment_outbox_attempts
        (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail,
         rail_transaction_id)
    VALUES (p_outbox_id, v_item.last_attempt_no + 2, p_decision::attempt_state, v_who, v_token,
            CASE WHEN p_decision = 'FAILED' THEN 'OPERATOR_CONFIRMED_FAILED' END,
            left(format('resolved by %s: %s', p_decided_by, p_reason), 1000),
            p_rail_transaction_id);
    DELETE FROM payment_outbox_pending p WHERE p.outbox_id = p_outbox_id;
    RETURN QUERY SELECT p_outbox_id, p_decision, p_decision, v_item.last_attempt_no + 2;
END
$$;

REVOKE ALL ON FUNCTION symphony.resolve_outbox_review(uuid, text, text, text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.resolve_outbox_review(uuid, text, text, text, text)
    TO symphony_control;
