-- trigger payment_outbox_pending_insert_matches_ledger on symphony.payment_outbox_pending: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0003_ledger_rules.sql.

DROP TRIGGER IF EXISTS payment_outbox_pending_insert_matches_ledger
    ON symphony.payment_outbox_pending;

CREATE CONSTRAINT TRIGGER payment_outbox_pending_insert_matches_ledger
    AFTER INSERT ON symphony.payment_outbox_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION symphony.check_pending_matches_ledger();

ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_insert_matches_ledger;
