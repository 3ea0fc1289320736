-- symphony.wake_outbox_workers: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0012_wake_after_commit.sql.

CREATE OR REPLACE FUNCTION symphony.wake_outbox_workers() RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('symphony_outbox_pending', '');
END
$$;

REVOKE ALL ON FUNCTION symphony.wake_outbox_workers()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.wake_outbox_workers()
    TO symphony_ingest;
