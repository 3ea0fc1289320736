-- trigger ledger_checkpoint_heads_00_fill_participant on symphony.ledger_checkpoint_heads: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0010_distribution_keys.sql.

DROP TRIGGER IF EXISTS ledger_checkpoint_heads_00_fill_participant
    ON symphony.ledger_checkpoint_heads;

CREATE TRIGGER ledger_checkpoint_heads_00_fill_participant
    BEFORE INSERT ON symphony.ledger_checkpoint_heads
    FOR EACH ROW WHEN (NEW.participant_id IS NULL)
    EXECUTE FUNCTION symphony.fill_participant_from_registry();

ALTER TABLE symphony.ledger_checkpoint_heads
    ENABLE ALWAYS TRIGGER ledger_checkpoint_heads_00_fill_participant;
