-- trigger payment_outbox_attempts_emit_events on symphony.payment_outbox_attempts: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0016_payment_events.sql.

DROP TRIGGER IF EXISTS payment_outbox_attempts_emit_events
    ON symphony.payment_outbox_attempts;

CREATE TRIGGER payment_outbox_attempts_emit_events
    AFTER INSERT ON symphony.payment_outbox_attempts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.emit_ledger_events();

ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_emit_events;
