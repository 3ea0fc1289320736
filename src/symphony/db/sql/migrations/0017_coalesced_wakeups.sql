-- Wake-ups that do not serialise commits: at most one notifying transaction in flight.
--
-- Why: a transaction that NOTIFYs takes a database-wide lock at commit and keeps it until its
-- commit record is flushed, so notifying transactions commit one at a time, one WAL flush
-- each (0012's header). Every enqueue notified, so concurrent enqueuers (the CLI's path, a
-- batch caller, several API processes) queued behind each other's flushes and PostgreSQL's
-- group commit never set in. The notification is only a wake-up hint: one in flight is
-- enough, because a worker that wakes claims everything committed by then, and a worker
-- that claimed anything claims again as soon as that cycle ends (it waits for a notification
-- or its poll interval only after a claim found nothing).
--
-- How: the pending table's statement trigger notifies only if it can take a transaction-level
-- advisory lock (pg_try_advisory_xact_lock(7302, 1): the two-key form, a key space apart from
-- the enqueue's one-key locks), which it then holds through its commit, flush and NOTIFY. A
-- transaction that finds the lock taken skips its NOTIFY without waiting: another wake-up is
-- about to be delivered. It never blocks and never fails an insert. A skipper's row that
-- commits after the woken worker's last claim found nothing waits for the next notification
-- or the poll interval (1 s by default): the latency figure of `make bench` is the measure.
-- An enqueue alone (no other in flight) notifies exactly as before.
--
-- Replaced: symphony.notify_pending_work(), from 0012 (the newest definition), with the lock
-- added; the wake_after_commit mark and everything else unchanged.

SET LOCAL ROLE symphony_owner;

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
