-- trigger participant_event_sequences_forward_only on symphony.participant_event_sequences: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0016_payment_events.sql.

DROP TRIGGER IF EXISTS participant_event_sequences_forward_only
    ON symphony.participant_event_sequences;

CREATE TRIGGER participant_event_sequences_forward_only
    BEFORE UPDATE OR DELETE ON symphony.participant_event_sequences
    FOR EACH ROW EXECUTE FUNCTION symphony.check_event_sequence_forward();

ALTER TABLE symphony.participant_event_sequences
    ENABLE ALWAYS TRIGGER participant_event_sequences_forward_only;
