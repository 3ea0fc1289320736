-- trigger payment_instruction_registry_no_truncate on symphony.payment_instruction_registry:
-- the running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0003_ledger_rules.sql.

DROP TRIGGER IF EXISTS payment_instruction_registry_no_truncate
    ON symphony.payment_instruction_registry;

CREATE TRIGGER payment_instruction_registry_no_truncate
    BEFORE TRUNCATE ON symphony.payment_instruction_registry
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.payment_instruction_registry
    ENABLE ALWAYS TRIGGER payment_instruction_registry_no_truncate;
