-- symphony.participant_payment: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0007_participants_and_tokens.sql.

CREATE OR REPLACE FUNCTION symphony.participant_payment(
    p_participant_id text,
    p_outbox_id      uuid
) RETURNS TABLE (
    outbox_id       uuid,
    instruction_id  text,
    idempotency_key text,
    rail_type       text,
    payload         jsonb,
    state           text,
    attempt_count   integer,
    next_attempt_at timestamptz,
    last_error_code text,
    created_at      timestamptz,
    updated_at      timestamptz,
    terminal_at     timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT v.outbox_id, v.instruction_id, v.idempotency_key, v.rail_type, v.payload, v.state,
           v.attempt_count, v.next_attempt_at, v.last_error_code, v.created_at, v.updated_at,
           v.terminal_at
      FROM participant_payment_view v
     WHERE v.outbox_id = p_outbox_id
       AND v.participant_id = p_participant_id
$$;

REVOKE ALL ON FUNCTION symphony.participant_payment(text, uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.participant_payment(text, uuid)
    TO symphony_control, symphony_readonly;
