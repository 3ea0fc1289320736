-- symphony.seal_instruction: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0009_tamper_evident_ledger.sql.

CREATE OR REPLACE FUNCTION symphony.seal_instruction() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    NEW.instruction_digest := instruction_digest(
        NEW.outbox_id, NEW.participant_id, NEW.instruction_id, NEW.idempotency_key,
        NEW.rail_type, NEW.payload, NEW.created_at);
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION symphony.seal_instruction()
    FROM PUBLIC;
