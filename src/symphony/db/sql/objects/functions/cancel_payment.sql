-- symphony.cancel_payment: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0023_cancellation.sql.

-- The participant's own cancel (the API, as symphony_ingest): only its own payments; another
-- participant's id is SY082 exactly like an unknown one. The reason is optional.
CREATE OR REPLACE FUNCTION symphony.cancel_payment(
    p_participant_id text,
    p_outbox_id      uuid,
    p_reason         text DEFAULT NULL
) RETURNS TABLE (
    outbox_id   uuid,
    result      text,
    state       text,
    refusal     text,
    attempt_no  integer,
    canceled_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_participant_id IS NULL OR p_outbox_id IS NULL THEN
        RAISE EXCEPTION 'a cancel names the participant and the payment'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_request';
    END IF;
    IF p_reason IS NOT NULL AND (char_length(btrim(p_reason)) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]') THEN
        RAISE EXCEPTION 'a cancel reason is 1-500 printable characters'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_reason';
    END IF;
    RETURN QUERY
    SELECT c.outbox_id, c.result, c.state, c.refusal, c.attempt_no, c.canceled_at
      FROM cancel_outbox_item(p_outbox_id, p_participant_id, 'participant:' || p_participant_id,
                              'CANCELED_BY_PARTICIPANT',
                              coalesce(p_reason, 'canceled by the participant')) c;
END
$$;

REVOKE ALL ON FUNCTION symphony.cancel_payment(text, uuid, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.cancel_payment(text, uuid, text)
    TO symphony_ingest;
