-- trigger participants_no_truncate on symphony.participants: the running definition, applied
-- again whenever this file changes (a repeatable object: see sql/objects/README.md). Moved here
-- from its last definition in migration 0007_participants_and_tokens.sql.

DROP TRIGGER IF EXISTS participants_no_truncate
    ON symphony.participants;

CREATE TRIGGER participants_no_truncate
    BEFORE TRUNCATE ON symphony.participants
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.check_access_forward_only();

ALTER TABLE symphony.participants
    ENABLE ALWAYS TRIGGER participants_no_truncate;
