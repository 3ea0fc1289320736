-- symphony.instruction_digest: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0009_tamper_evident_ledger.sql.

CREATE OR REPLACE FUNCTION symphony.instruction_digest(
    p_outbox_id uuid, p_participant_id text, p_instruction_id text, p_idempotency_key text,
    p_rail_type text, p_payload jsonb, p_created_at timestamptz
) RETURNS bytea
LANGUAGE sql IMMUTABLE
AS $$
    SELECT sha256(convert_to(
        'symphony-instruction-v1'
        || '|' || symphony.digest_field(p_outbox_id::text)
        || '|' || symphony.digest_field(p_participant_id)
        || '|' || symphony.digest_field(p_instruction_id)
        || '|' || symphony.digest_field(p_idempotency_key)
        || '|' || symphony.digest_field(p_rail_type)
        || '|' || symphony.digest_field(p_payload::text)
        || '|' || symphony.digest_field(symphony.digest_micros(p_created_at)), 'UTF8'))
$$;

REVOKE ALL ON FUNCTION symphony.instruction_digest(uuid, text, text, text, text, jsonb, timestamp with time zone)
    FROM PUBLIC;
