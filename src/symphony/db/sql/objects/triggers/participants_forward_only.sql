-- trigger participants_forward_only on symphony.participants: the running definition, applied
-- again whenever this file changes (a repeatable object: see sql/objects/README.md). Moved here
-- from its last definition in migration 0007_participants_and_tokens.sql.

DROP TRIGGER IF EXISTS participants_forward_only
    ON symphony.participants;

CREATE TRIGGER participants_forward_only
    BEFORE UPDATE OR DELETE ON symphony.participants
    FOR EACH ROW EXECUTE FUNCTION symphony.check_access_forward_only();

ALTER TABLE symphony.participants
    ENABLE ALWAYS TRIGGER participants_forward_only;
