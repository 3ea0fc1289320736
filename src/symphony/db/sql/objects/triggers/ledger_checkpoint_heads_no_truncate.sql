-- trigger ledger_checkpoint_heads_no_truncate on symphony.ledger_checkpoint_heads: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0009_tamper_evident_ledger.sql.

DROP TRIGGER IF EXISTS ledger_checkpoint_heads_no_truncate
    ON symphony.ledger_checkpoint_heads;

CREATE TRIGGER ledger_checkpoint_heads_no_truncate
    BEFORE TRUNCATE ON symphony.ledger_checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.ledger_checkpoint_heads
    ENABLE ALWAYS TRIGGER ledger_checkpoint_heads_no_truncate;
