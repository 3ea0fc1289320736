-- trigger payment_events_append_only on symphony.payment_events: the running definition,
-- applied again whenever this file changes (a repeatable object: see sql/objects/README.md).
-- Moved here from its last definition in migration 0016_payment_events.sql.

DROP TRIGGER IF EXISTS payment_events_append_only
    ON symphony.payment_events;

CREATE TRIGGER payment_events_append_only
    BEFORE UPDATE OR DELETE ON symphony.payment_events
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.payment_events
    ENABLE ALWAYS TRIGGER payment_events_append_only;
