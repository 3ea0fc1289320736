-- trigger ledger_checkpoints_append_only on symphony.ledger_checkpoints: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0009_tamper_evident_ledger.sql.

DROP TRIGGER IF EXISTS ledger_checkpoints_append_only
    ON symphony.ledger_checkpoints;

CREATE TRIGGER ledger_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON symphony.ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.ledger_checkpoints
    ENABLE ALWAYS TRIGGER ledger_checkpoints_append_only;
