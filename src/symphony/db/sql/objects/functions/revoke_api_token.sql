-- symphony.revoke_api_token: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0007_participants_and_tokens.sql.

CREATE OR REPLACE FUNCTION symphony.revoke_api_token(
    p_token_id uuid
) RETURNS TABLE (
    token_id   uuid,
    revoked_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_revoked_at timestamptz;
BEGIN
    SELECT t.revoked_at INTO v_revoked_at FROM api_tokens t
     WHERE t.token_id = p_token_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no token with this id'
            USING ERRCODE = 'SY037', CONSTRAINT = 'revoke_api_token_known';
    END IF;
    -- Revoking twice is not an error: the token is dead either way, and stays so.
    IF v_revoked_at IS NULL THEN
        UPDATE api_tokens t SET revoked_at = now() WHERE t.token_id = p_token_id
        RETURNING t.revoked_at INTO v_revoked_at;
    END IF;
    RETURN QUERY SELECT p_token_id, v_revoked_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.revoke_api_token(uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.revoke_api_token(uuid)
    TO symphony_control;
