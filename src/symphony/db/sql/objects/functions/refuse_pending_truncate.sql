-- symphony.refuse_pending_truncate: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0003_ledger_rules.sql.

-- TRUNCATE would drop live items without a terminal row; no role may do it.
CREATE OR REPLACE FUNCTION symphony.refuse_pending_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'live outbox items cannot be truncated'
        USING ERRCODE = 'P0001', CONSTRAINT = 'payment_outbox_pending_no_truncate';
END
$$;

ALTER FUNCTION symphony.refuse_pending_truncate() SECURITY DEFINER;

REVOKE ALL ON FUNCTION symphony.refuse_pending_truncate()
    FROM PUBLIC;
