-- symphony.issue_api_token: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0014_operators.sql.

CREATE OR REPLACE FUNCTION symphony.issue_api_token(
    p_token_id       uuid,
    p_kind           text,
    p_participant_id text,
    p_label          text,
    p_secret_salt    bytea,
    p_secret_hash    bytea
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text,
    label          text,
    created_at     timestamptz
)
LANGUAGE sql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.token_id, t.kind, t.participant_id, t.label, t.created_at
      FROM issue_scoped_api_token(p_token_id, p_kind, p_participant_id, p_label,
                                  p_secret_salt, p_secret_hash,
                                  CASE WHEN p_kind = 'OPERATOR' THEN 'VIEWER' END) t
$$;

REVOKE ALL ON FUNCTION symphony.issue_api_token(uuid, text, text, text, bytea, bytea)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.issue_api_token(uuid, text, text, text, bytea, bytea)
    TO symphony_control;
