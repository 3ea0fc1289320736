-- trigger payment_outbox_attempts_00_fill_participant on symphony.payment_outbox_attempts: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0010_distribution_keys.sql.

DROP TRIGGER IF EXISTS payment_outbox_attempts_00_fill_participant
    ON symphony.payment_outbox_attempts;

CREATE TRIGGER payment_outbox_attempts_00_fill_participant
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH ROW WHEN (NEW.participant_id IS NULL)
    EXECUTE FUNCTION symphony.fill_participant_from_registry();

ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_00_fill_participant;
