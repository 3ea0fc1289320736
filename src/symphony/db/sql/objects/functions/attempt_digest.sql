-- symphony.attempt_digest: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0009_tamper_evident_ledger.sql.

CREATE OR REPLACE FUNCTION symphony.attempt_digest(
    p_previous bytea, p_outbox_id uuid, p_attempt_no integer, p_state symphony.attempt_state,
    p_worker_id text, p_error_code text, p_error_detail text, p_rail_transaction_id text,
    p_recorded_at timestamptz, p_recorded_by text, p_lease_digest bytea
) RETURNS bytea
LANGUAGE sql IMMUTABLE
AS $$
    SELECT sha256(coalesce(p_previous, ''::bytea) || convert_to(
        'symphony-attempt-v1'
        || '|' || symphony.digest_field(p_outbox_id::text)
        || '|' || symphony.digest_field(p_attempt_no::text)
        || '|' || symphony.digest_field(p_state::text)
        || '|' || symphony.digest_field(p_worker_id)
        || '|' || symphony.digest_field(p_error_code)
        || '|' || symphony.digest_field(p_error_detail)
        || '|' || symphony.digest_field(p_rail_transaction_id)
        || '|' || symphony.digest_field(symphony.digest_micros(p_recorded_at))
        || '|' || symphony.digest_field(p_recorded_by)
        || '|' || symphony.digest_field(encode(p_lease_digest, 'hex')), 'UTF8'))
$$;

REVOKE ALL ON FUNCTION symphony.attempt_digest(bytea, uuid, integer, symphony.attempt_state, text, text, text, text, timestamp with time zone, text, bytea)
    FROM PUBLIC;
