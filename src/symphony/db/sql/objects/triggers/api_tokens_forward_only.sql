-- trigger api_tokens_forward_only on symphony.api_tokens: the running definition, applied again
-- whenever this file changes (a repeatable object: see sql/objects/README.md). Moved here from
-- its last definition in migration 0007_participants_and_tokens.sql.

DROP TRIGGER IF EXISTS api_tokens_forward_only
    ON symphony.api_tokens;

CREATE TRIGGER api_tokens_forward_only
    BEFORE UPDATE OR DELETE ON symphony.api_tokens
    FOR EACH ROW EXECUTE FUNCTION symphony.check_access_forward_only();

ALTER TABLE symphony.api_tokens
    ENABLE ALWAYS TRIGGER api_tokens_forward_only;
