-- symphony.participant_payment_attempts: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0016_payment_events.sql.

-- Changed from 0010 only in reading the view above.
CREATE OR REPLACE FUNCTION symphony.participant_payment_attempts(
    p_participant_id text,
    p_outbox_id      uuid
) RETURNS TABLE (
    attempt_no          integer,
    state               text,
    error_code          text,
    error_detail        text,
    rail_transaction_id text,
    recorded_at         timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT a.attempt_no, a.state, a.error_code, a.error_detail, a.rail_transaction_id,
           a.recorded_at
      FROM payment_instruction_registry r
      JOIN participant_attempt_view a
        ON a.outbox_id = r.outbox_id AND a.participant_id = r.participant_id
     WHERE r.outbox_id = p_outbox_id
       AND r.participant_id = p_participant_id
       AND a.participant_id = p_participant_id
     ORDER BY a.attempt_no
$$;

REVOKE ALL ON FUNCTION symphony.participant_payment_attempts(text, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.participant_payment_attempts(text, uuid)
    TO symphony_control, symphony_readonly;
