-- trigger payment_outbox_attempts_terminal_leaves_pending on symphony.payment_outbox_attempts:
-- the running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0023_cancellation.sql.

DROP TRIGGER IF EXISTS payment_outbox_attempts_terminal_leaves_pending
    ON symphony.payment_outbox_attempts;

CREATE CONSTRAINT TRIGGER payment_outbox_attempts_terminal_leaves_pending
    AFTER INSERT ON symphony.payment_outbox_attempts
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.state IN ('DISPATCHED', 'FAILED', 'CANCELED'))
    EXECUTE FUNCTION symphony.check_pending_matches_ledger();

ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_terminal_leaves_pending;
