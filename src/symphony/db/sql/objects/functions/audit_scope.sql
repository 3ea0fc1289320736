-- symphony.audit_scope: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0009_tamper_evident_ledger.sql.

-- Items an incremental audit looks at: registered, or with a ledger row, at or after p_since
-- (every item when p_since is NULL).
CREATE OR REPLACE FUNCTION symphony.audit_scope(p_since timestamptz) RETURNS TABLE (outbox_id uuid)
LANGUAGE sql STABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT r.outbox_id FROM payment_instruction_registry r
     WHERE p_since IS NULL OR r.created_at >= p_since
    UNION
    SELECT a.outbox_id FROM payment_outbox_attempts a
     WHERE p_since IS NOT NULL AND a.recorded_at >= p_since
$$;

REVOKE ALL ON FUNCTION symphony.audit_scope(timestamp with time zone)
    FROM PUBLIC;
