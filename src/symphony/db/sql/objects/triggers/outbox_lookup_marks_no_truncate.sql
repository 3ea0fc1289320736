-- trigger outbox_lookup_marks_no_truncate on symphony.outbox_lookup_marks: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0009_tamper_evident_ledger.sql.

DROP TRIGGER IF EXISTS outbox_lookup_marks_no_truncate
    ON symphony.outbox_lookup_marks;

CREATE TRIGGER outbox_lookup_marks_no_truncate
    BEFORE TRUNCATE ON symphony.outbox_lookup_marks
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.outbox_lookup_marks
    ENABLE ALWAYS TRIGGER outbox_lookup_marks_no_truncate;
