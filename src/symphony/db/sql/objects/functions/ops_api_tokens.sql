-- symphony.ops_api_tokens: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0014_operators.sql.

-- Every token without its secret material, for the operator's token list (newest first).
CREATE OR REPLACE FUNCTION symphony.ops_api_tokens(
    p_limit integer DEFAULT 200
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    scope          text,
    participant_id text,
    label          text,
    created_at     timestamptz,
    revoked_at     timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.token_id, t.kind, t.scope, t.participant_id, t.label, t.created_at, t.revoked_at
      FROM api_tokens t
     ORDER BY t.created_at DESC, t.token_id
     LIMIT least(greatest(coalesce(p_limit, 200), 1), 1000)
$$;

REVOKE ALL ON FUNCTION symphony.ops_api_tokens(integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_api_tokens(integer)
    TO symphony_control, symphony_readonly;
