-- symphony.operator_actor: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0014_operators.sql.

-- Who acts: the token's id and label, if the token is live, of OPERATOR kind and scope. Not
-- granted to anyone: only the action functions (as the owner) call it. FOR SHARE: a
-- revocation of the token waits for the action, or the action sees the revocation.
CREATE OR REPLACE FUNCTION symphony.operator_actor(
    p_token_id    uuid,
    p_secret_hash bytea
) RETURNS TABLE (
    token_id uuid,
    label    text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row api_tokens%ROWTYPE;
BEGIN
    SELECT * INTO v_row FROM api_tokens t
     WHERE t.token_id = p_token_id
       AND t.secret_hash = p_secret_hash
       AND t.revoked_at IS NULL
       AND t.kind = 'OPERATOR'
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no live operator token with this id and secret'
            USING ERRCODE = 'SY060', CONSTRAINT = 'operator_actor_token';
    END IF;
    IF v_row.scope IS DISTINCT FROM 'OPERATOR' THEN
        RAISE EXCEPTION 'the token''s scope is %: only an OPERATOR-scope token may act',
                        v_row.scope
            USING ERRCODE = 'SY061', CONSTRAINT = 'operator_actor_scope';
    END IF;
    RETURN QUERY SELECT v_row.token_id, v_row.label;
END
$$;

REVOKE ALL ON FUNCTION symphony.operator_actor(uuid, bytea)
    FROM PUBLIC;
