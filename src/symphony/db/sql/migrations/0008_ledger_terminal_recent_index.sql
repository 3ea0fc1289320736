-- 0008 — an index on the ledger's terminal rows by time, for the operator API.
--
-- Why: the operator dashboard asks two questions of the ledger every few seconds: "which items
-- failed most recently" (newest FAILED rows, bounded by a limit) and "how many items ended per
-- minute lately" (terminal rows since a time). Without an index both read the whole ledger,
-- which only grows. A partial index over the terminal rows only (at most one per item, I6),
-- keyed by (state, recorded_at, attempt_id), answers the first by reading its FAILED end
-- backwards and stopping at the limit, and the second by a range from the window's start.
-- The rows it leaves out (DISPATCHING, RETRYABLE, ZOMBIE_REQUEUE) are the bulk of the ledger.
-- Not CONCURRENTLY: a migration runs in one transaction, so the build blocks ledger writes
-- while it reads the ledger once (schedule the migration accordingly on a large ledger).

SET LOCAL ROLE symphony_owner;

CREATE INDEX payment_outbox_attempts_terminal_recent_idx
    ON symphony.payment_outbox_attempts (state, recorded_at, attempt_id)
    WHERE state IN ('DISPATCHED', 'FAILED');
