-- trigger payment_outbox_pending_notify on symphony.payment_outbox_pending: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0003_ledger_rules.sql.

DROP TRIGGER IF EXISTS payment_outbox_pending_notify
    ON symphony.payment_outbox_pending;

CREATE TRIGGER payment_outbox_pending_notify
    AFTER INSERT ON symphony.payment_outbox_pending
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.notify_pending_work();
