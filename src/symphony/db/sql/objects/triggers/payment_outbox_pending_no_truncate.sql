-- trigger payment_outbox_pending_no_truncate on symphony.payment_outbox_pending: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0003_ledger_rules.sql.

DROP TRIGGER IF EXISTS payment_outbox_pending_no_truncate
    ON symphony.payment_outbox_pending;

CREATE TRIGGER payment_outbox_pending_no_truncate
    BEFORE TRUNCATE ON symphony.payment_outbox_pending
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_pending_truncate();

ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_no_truncate;
