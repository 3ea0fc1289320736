-- trigger payment_outbox_attempts_append_only on symphony.payment_outbox_attempts: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0003_ledger_rules.sql.

DROP TRIGGER IF EXISTS payment_outbox_attempts_append_only
    ON symphony.payment_outbox_attempts;

CREATE TRIGGER payment_outbox_attempts_append_only
    BEFORE UPDATE OR DELETE ON symphony.payment_outbox_attempts
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_append_only;
