-- trigger payment_outbox_pending_emit_created on symphony.payment_outbox_pending: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0016_payment_events.sql.

DROP TRIGGER IF EXISTS payment_outbox_pending_emit_created
    ON symphony.payment_outbox_pending;

CREATE TRIGGER payment_outbox_pending_emit_created
    AFTER INSERT ON symphony.payment_outbox_pending
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.emit_created_events();

ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_emit_created;
