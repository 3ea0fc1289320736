-- trigger outbox_lookup_marks_00_fill_participant on symphony.outbox_lookup_marks: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0010_distribution_keys.sql.

DROP TRIGGER IF EXISTS outbox_lookup_marks_00_fill_participant
    ON symphony.outbox_lookup_marks;

CREATE TRIGGER outbox_lookup_marks_00_fill_participant
    BEFORE INSERT ON symphony.outbox_lookup_marks
    FOR EACH ROW WHEN (NEW.participant_id IS NULL)
    EXECUTE FUNCTION symphony.fill_participant_from_registry();

ALTER TABLE symphony.outbox_lookup_marks
    ENABLE ALWAYS TRIGGER outbox_lookup_marks_00_fill_participant;
