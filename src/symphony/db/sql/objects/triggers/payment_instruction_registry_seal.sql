-- trigger payment_instruction_registry_seal on symphony.payment_instruction_registry: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0009_tamper_evident_ledger.sql.

DROP TRIGGER IF EXISTS payment_instruction_registry_seal
    ON symphony.payment_instruction_registry;

CREATE TRIGGER payment_instruction_registry_seal
    BEFORE INSERT ON symphony.payment_instruction_registry
    FOR EACH ROW EXECUTE FUNCTION symphony.seal_instruction();

ALTER TABLE symphony.payment_instruction_registry
    ENABLE ALWAYS TRIGGER payment_instruction_registry_seal;
