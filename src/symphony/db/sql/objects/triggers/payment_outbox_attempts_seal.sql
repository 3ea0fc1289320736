-- trigger payment_outbox_attempts_seal on symphony.payment_outbox_attempts: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0009_tamper_evident_ledger.sql.

DROP TRIGGER IF EXISTS payment_outbox_attempts_seal
    ON symphony.payment_outbox_attempts;

CREATE TRIGGER payment_outbox_attempts_seal
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH ROW EXECUTE FUNCTION symphony.seal_attempt();

ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_seal;
