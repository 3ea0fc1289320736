-- trigger payment_outbox_pending_monotonic on symphony.payment_outbox_pending: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0003_ledger_rules.sql.

DROP TRIGGER IF EXISTS payment_outbox_pending_monotonic
    ON symphony.payment_outbox_pending;

CREATE TRIGGER payment_outbox_pending_monotonic
    BEFORE UPDATE ON symphony.payment_outbox_pending
    FOR EACH ROW EXECUTE FUNCTION symphony.check_pending_monotonic();

ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_monotonic;
