-- trigger payment_outbox_pending_mark_lookup_insert on symphony.payment_outbox_pending: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0009_tamper_evident_ledger.sql.

DROP TRIGGER IF EXISTS payment_outbox_pending_mark_lookup_insert
    ON symphony.payment_outbox_pending;

CREATE TRIGGER payment_outbox_pending_mark_lookup_insert
    AFTER INSERT ON symphony.payment_outbox_pending
    FOR EACH ROW WHEN (NEW.needs_lookup)
    EXECUTE FUNCTION symphony.mark_lookup_needed();

ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_mark_lookup_insert;
