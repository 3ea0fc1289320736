-- symphony.api_token_salt: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0007_participants_and_tokens.sql.

-- The salt of a live token, so the caller can hash the secret it was shown. Salts are not
-- secret; the hash never leaves the table. NULL for an unknown or dead token.
CREATE OR REPLACE FUNCTION symphony.api_token_salt(
    p_token_id uuid
) RETURNS bytea
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.secret_salt
      FROM api_tokens t
      LEFT JOIN participants pt ON pt.participant_id = t.participant_id
     WHERE t.token_id = p_token_id
       AND t.revoked_at IS NULL
       AND (t.participant_id IS NULL OR pt.status = 'ACTIVE')
$$;

REVOKE ALL ON FUNCTION symphony.api_token_salt(uuid)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.api_token_salt(uuid)
    TO symphony_control, symphony_readonly;
