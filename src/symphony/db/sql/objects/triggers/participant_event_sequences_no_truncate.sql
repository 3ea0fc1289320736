-- trigger participant_event_sequences_no_truncate on symphony.participant_event_sequences: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0016_payment_events.sql.

DROP TRIGGER IF EXISTS participant_event_sequences_no_truncate
    ON symphony.participant_event_sequences;

CREATE TRIGGER participant_event_sequences_no_truncate
    BEFORE TRUNCATE ON symphony.participant_event_sequences
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.check_event_sequence_forward();

ALTER TABLE symphony.participant_event_sequences
    ENABLE ALWAYS TRIGGER participant_event_sequences_no_truncate;
