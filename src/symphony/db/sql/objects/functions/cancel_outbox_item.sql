-- symphony.cancel_outbox_item: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0023_cancellation.sql.

-- The one cancellation: decide on the locked pending row, append CANCELED, remove the row.
-- `p_participant_id` NULL: any participant's payment (an operator). Owner-only; the entry
-- points below validate who asks and why.
CREATE OR REPLACE FUNCTION symphony.cancel_outbox_item(
    p_outbox_id      uuid,
    p_participant_id text,
    p_canceled_by    text,
    p_error_code     text,
    p_reason         text
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
    v_pid     text;
    v_item    payment_outbox_pending%ROWTYPE;
    v_last    record;
    v_state   text;
    v_refusal text;
    v_at      timestamptz;
BEGIN
    SELECT r.participant_id INTO v_pid
      FROM payment_instruction_registry r
     WHERE r.outbox_id = p_outbox_id
       AND (p_participant_id IS NULL OR r.participant_id = p_participant_id);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such payment'
            USING ERRCODE = 'SY082', CONSTRAINT = 'cancel_payment_known';
    END IF;

    -- The lock a claim skips (SKIP LOCKED) and waits behind nothing else.
    SELECT * INTO v_item
      FROM payment_outbox_pending p
     WHERE p.outbox_id = p_outbox_id AND p.participant_id = v_pid
       FOR UPDATE;
    IF NOT FOUND THEN
        SELECT a.state::text AS state, a.attempt_no, a.recorded_at INTO v_last
          FROM payment_outbox_attempts a
         WHERE a.outbox_id = p_outbox_id AND a.participant_id = v_pid
         ORDER BY a.attempt_no DESC
         LIMIT 1;
        IF v_last.state = 'CANCELED' THEN
            RETURN QUERY SELECT p_outbox_id, v_pid, 'ALREADY_CANCELED'::text, 'CANCELED'::text,
                                NULL::text, v_last.attempt_no::integer, v_last.recorded_at;
        ELSE
            RETURN QUERY SELECT p_outbox_id, v_pid, 'NOT_CANCELABLE'::text, v_last.state,
                                'TERMINAL'::text, v_last.attempt_no::integer, NULL::timestamptz;
        END IF;
        RETURN;
    END IF;

    v_refusal := CASE
        WHEN v_item.lease_token IS NOT NULL THEN 'DISPATCHING'
        WHEN v_item.review_reason IS NOT NULL THEN 'UNDER_REVIEW'
        WHEN v_item.needs_lookup OR EXISTS (
                 SELECT 1 FROM outbox_lookup_marks m
                  WHERE m.outbox_id = p_outbox_id AND m.participant_id = v_pid)
            THEN 'MAY_HAVE_REACHED_RAIL'
    END;
    IF v_refusal IS NOT NULL THEN
        SELECT v.state INTO v_state FROM participant_payment_view v
         WHERE v.outbox_id = p_outbox_id AND v.participant_id = v_pid;
        RETURN QUERY SELECT p_outbox_id, v_pid, 'NOT_CANCELABLE'::text, v_state, v_refusal,
                            v_item.last_attempt_no, NULL::timestamptz;
        RETURN;
    END IF;

    DELETE FROM payment_outbox_pending p
     WHERE p.outbox_id = p_outbox_id AND p.participant_id = v_pid;
    INSERT INTO payment_outbox_attempts AS a
        (outbox_id, participant_id, attempt_no, state, worker_id, error_code, error_detail)
    VALUES (p_outbox_id, v_pid, v_item.last_attempt_no + 1, 'CANCELED', p_canceled_by,
            p_error_code, left(p_reason, 1000))
    RETURNING a.recorded_at INTO v_at;
    RETURN QUERY SELECT p_outbox_id, v_pid, 'CANCELED'::text, 'CANCELED'::text, NULL::text,
                        v_item.last_attempt_no + 1, v_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.cancel_outbox_item(uuid, text, text, text, text)
    FROM PUBLIC;
