-- trigger payment_outbox_attempts_cancel_is_clean on symphony.payment_outbox_attempts: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0023_cancellation.sql.

DROP TRIGGER IF EXISTS payment_outbox_attempts_cancel_is_clean
    ON symphony.payment_outbox_attempts;

-- Fires after payment_outbox_attempts_00_fill_participant (BEFORE triggers run in name
-- order), so the row's participant is known.
CREATE TRIGGER payment_outbox_attempts_cancel_is_clean
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH ROW WHEN (NEW.state = 'CANCELED')
    EXECUTE FUNCTION symphony.check_cancel_is_clean();

ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_cancel_is_clean;
