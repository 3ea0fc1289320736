-- symphony.issue_scoped_api_token: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

-- issue: the scope is an argument of issue_scoped_api_token (an operator token without one
-- is refused there, not defaulted: the command line chooses VIEWER when the operator does not
-- say). issue_api_token of 0007 stays for its callers and issues what is safe: an operator
-- token it makes is a VIEWER.
CREATE OR REPLACE FUNCTION symphony.issue_scoped_api_token(
    p_token_id       uuid,
    p_kind           text,
    p_participant_id text,
    p_label          text,
    p_secret_salt    bytea,
    p_secret_hash    bytea,
    p_scope          text
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text,
    label          text,
    scope          text,
    created_at     timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_token_id IS NULL OR p_kind IS NULL OR p_kind NOT IN ('PARTICIPANT', 'OPERATOR')
       OR (p_kind = 'PARTICIPANT') <> (p_participant_id IS NOT NULL)
       OR (p_kind = 'OPERATOR') <> (p_scope IS NOT NULL)
       OR (p_scope IS NOT NULL AND p_scope NOT IN ('VIEWER', 'OPERATOR'))
       OR p_label IS NULL OR char_length(p_label) > 200
       OR p_label ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]'
       OR octet_length(p_secret_salt) IS DISTINCT FROM 16
       OR octet_length(p_secret_hash) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION 'a token is PARTICIPANT (with a participant) or OPERATOR (without, with '
                        'a scope of VIEWER or OPERATOR), with a label of at most 200 characters'
            USING ERRCODE = 'SY036', CONSTRAINT = 'issue_api_token_request';
    END IF;
    IF p_participant_id IS NOT NULL THEN
        PERFORM 1 FROM participants pt WHERE pt.participant_id = p_participant_id FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no participant with this id'
                USING ERRCODE = 'SY034', CONSTRAINT = 'issue_api_token_participant_known';
        END IF;
        PERFORM 1 FROM participants pt
         WHERE pt.participant_id = p_participant_id AND pt.status = 'ACTIVE';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the participant is not active'
                USING ERRCODE = 'SY030', CONSTRAINT = 'issue_api_token_participant_active';
        END IF;
    END IF;
    RETURN QUERY
    INSERT INTO api_tokens AS t
        (token_id, kind, participant_id, label, secret_salt, secret_hash, scope)
    VALUES (p_token_id, p_kind, p_participant_id, p_label, p_secret_salt, p_secret_hash, p_scope)
    RETURNING t.token_id, t.kind, t.participant_id, t.label, t.scope, t.created_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.issue_scoped_api_token(uuid, text, text, text, bytea, bytea, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.issue_scoped_api_token(uuid, text, text, text, bytea, bytea, text)
    TO symphony_control;
