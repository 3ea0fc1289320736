-- symphony.check_access_forward_only: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

-- As in 0007, and the scope is fixed like the kind.
CREATE OR REPLACE FUNCTION symphony.check_access_forward_only() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION '% rows are never removed', TG_TABLE_NAME
            USING ERRCODE = 'P0001', CONSTRAINT = TG_TABLE_NAME || '_append_only';
    END IF;
    IF TG_TABLE_NAME = 'participants' THEN
        IF NEW.participant_id <> OLD.participant_id
           OR NEW.created_at <> OLD.created_at
           OR (OLD.status = 'REVOKED'
               AND (NEW.status <> 'REVOKED' OR NEW.revoked_at <> OLD.revoked_at
                    OR NEW.display_name <> OLD.display_name)) THEN
            RAISE EXCEPTION 'a participant keeps its identity and only moves ACTIVE -> REVOKED'
                USING ERRCODE = 'SY038', CONSTRAINT = 'participants_status_forward_only';
        END IF;
    ELSE
        IF NEW.token_id <> OLD.token_id
           OR NEW.kind <> OLD.kind
           OR NEW.scope IS DISTINCT FROM OLD.scope
           OR NEW.participant_id IS DISTINCT FROM OLD.participant_id
           OR NEW.label <> OLD.label
           OR NEW.secret_salt <> OLD.secret_salt
           OR NEW.secret_hash <> OLD.secret_hash
           OR NEW.created_at <> OLD.created_at
           OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
           OR (OLD.revoked_at IS NULL AND NEW.revoked_at IS NULL) THEN
            RAISE EXCEPTION 'a token can only be revoked, once'
                USING ERRCODE = 'SY038', CONSTRAINT = 'api_tokens_revocation_forward_only';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION symphony.check_access_forward_only()
    FROM PUBLIC;
