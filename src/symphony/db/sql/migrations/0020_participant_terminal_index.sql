-- 0020 — the operators' per-participant index of terminal ledger rows, kept to queries that
-- name a participant.
--
-- Why: the operators migration indexed a participant's terminal rows by time,
-- (participant_id, recorded_at) WHERE state IN ('DISPATCHED', 'FAILED'), for one
-- participant's failure rate. On PostgreSQL 18 a skip scan lets the planner use that index
-- for a query that names no participant at all: the dashboard's throughput per minute, whose
-- plan is pinned on the terminal-rows index (tests/unit/test_ops_query_plans.py), was read
-- through it instead, skipping over every participant. The same index, with its predicate
-- adding participant_id IS NOT NULL (true of every row: the column is NOT NULL), is proven
-- usable only by a query with a condition on participant_id (a strict comparison implies it),
-- so the fleet-wide time-window queries keep their own index. Same columns, same name.
-- Not CONCURRENTLY: a migration runs in one transaction (the build reads the terminal rows).

SET LOCAL ROLE symphony_owner;

DROP INDEX symphony.payment_outbox_attempts_participant_terminal_idx;
CREATE INDEX payment_outbox_attempts_participant_terminal_idx
    ON symphony.payment_outbox_attempts (participant_id, recorded_at)
    WHERE state IN ('DISPATCHED', 'FAILED') AND participant_id IS NOT NULL;
