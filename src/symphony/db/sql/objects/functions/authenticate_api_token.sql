-- symphony.authenticate_api_token: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

CREATE OR REPLACE FUNCTION symphony.authenticate_api_token(
    p_token_id    uuid,
    p_secret_hash bytea
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text,
    scope          text,
    label          text
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.token_id, t.kind, t.participant_id, t.scope, t.label
      FROM api_tokens t
      LEFT JOIN participants pt ON pt.participant_id = t.participant_id
     WHERE t.token_id = p_token_id
       AND t.secret_hash = p_secret_hash
       AND t.revoked_at IS NULL
       AND (t.participant_id IS NULL OR pt.status = 'ACTIVE')
$$;

REVOKE ALL ON FUNCTION symphony.authenticate_api_token(uuid, bytea)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.authenticate_api_token(uuid, bytea)
    TO symphony_control, symphony_readonly;
