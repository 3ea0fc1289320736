-- symphony.ledger_writer_xid: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0019_checkpoint_without_blocking.sql.

CREATE OR REPLACE FUNCTION symphony.ledger_writer_xid() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    -- Assigns the transaction id now, before the statement numbers its rows (see above).
    PERFORM pg_current_xact_id();
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION symphony.ledger_writer_xid()
    FROM PUBLIC;
