-- trigger participant_outbox_sequences_forward_only on symphony.participant_outbox_sequences:
-- the running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0003_ledger_rules.sql.

DROP TRIGGER IF EXISTS participant_outbox_sequences_forward_only
    ON symphony.participant_outbox_sequences;

CREATE TRIGGER participant_outbox_sequences_forward_only
    BEFORE UPDATE OR DELETE ON symphony.participant_outbox_sequences
    FOR EACH ROW EXECUTE FUNCTION symphony.check_sequence_forward();

ALTER TABLE symphony.participant_outbox_sequences
    ENABLE ALWAYS TRIGGER participant_outbox_sequences_forward_only;
