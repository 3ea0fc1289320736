-- trigger payment_outbox_attempts_00_writer_xid on symphony.payment_outbox_attempts: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0019_checkpoint_without_blocking.sql.

DROP TRIGGER IF EXISTS payment_outbox_attempts_00_writer_xid
    ON symphony.payment_outbox_attempts;

-- "00": before every other trigger of the table (they fire in name order).
CREATE TRIGGER payment_outbox_attempts_00_writer_xid
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.ledger_writer_xid();

ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_00_writer_xid;
