-- symphony.notify_pending_work: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0017_coalesced_wakeups.sql.

CREATE OR REPLACE FUNCTION symphony.notify_pending_work() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    -- The batch that set the mark wakes the workers itself, right after its commit.
    IF current_setting('symphony.wake_after_commit', true) = 'on' THEN
        RETURN NULL;
    END IF;
    -- One notifying transaction at a time; the others ride on its wake-up. (Nested: a
    -- statement that inserted nothing must not take the lock and silence the others.)
    IF EXISTS (SELECT 1 FROM new_rows) THEN
        IF pg_try_advisory_xact_lock(7302, 1) THEN
            PERFORM pg_notify('symphony_outbox_pending', '');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION symphony.notify_pending_work()
    FROM PUBLIC;
