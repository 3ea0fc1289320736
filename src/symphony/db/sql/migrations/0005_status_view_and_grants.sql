-- 0005 — the supervisor status view and least-privilege grants.
--
-- Why: PUBLIC gets nothing; each runtime role gets exactly what its service does.
-- * ingest:   execute enqueue_payment_outbox. Nothing else, not even a read.
-- * executor: execute claim / complete / repair; read the rails and the status view (to count
--             zombies). No table reads or writes: every write goes through the functions.
-- * readonly, auditor: read the outbox, never participant_outbox_sequences (a participant's
--             volume is commercial information) and never any sequence object.
-- * Nobody reads lease tokens but the functions: a token is the capability to complete an
--   item, so it is handed only to the worker that claimed the item (I9 fences a compromised
--   role too, not only a confused one).
-- * control:  the operator: read everything, run a repair by hand, tune the retry policy.
-- No runtime role may TRUNCATE, UPDATE or DELETE the ledger or write the pending table.

SET LOCAL ROLE symphony_owner;

CREATE VIEW symphony.outbox_supervisor_status
WITH (security_barrier = true) AS
SELECT
    count(*) FILTER (WHERE p.lease_token IS NULL AND p.next_attempt_at <= now())  AS due,
    count(*) FILTER (WHERE p.lease_token IS NULL AND p.next_attempt_at > now())   AS scheduled,
    count(*) FILTER (WHERE p.lease_token IS NOT NULL AND p.lease_expires_at > now())
                                                                                  AS dispatching,
    count(*) FILTER (WHERE p.lease_token IS NOT NULL AND p.lease_expires_at <= now())
                                                                                  AS zombies,
    count(*) FILTER (WHERE p.needs_lookup)                                        AS awaiting_lookup,
    count(*)                                                                      AS pending_total,
    min(p.created_at)                                                             AS oldest_pending_at,
    (SELECT count(*) FROM symphony.payment_outbox_attempts a WHERE a.state = 'DISPATCHED')
                                                                                  AS dispatched_total,
    (SELECT count(*) FROM symphony.payment_outbox_attempts a WHERE a.state = 'FAILED')
                                                                                  AS failed_total,
    now()                                                                         AS observed_at
FROM symphony.payment_outbox_pending p;

REVOKE ALL ON ALL TABLES IN SCHEMA symphony FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA symphony FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA symphony FROM PUBLIC;
REVOKE ALL ON TYPE symphony.attempt_state FROM PUBLIC;

GRANT USAGE ON SCHEMA symphony
    TO symphony_control, symphony_ingest, symphony_executor, symphony_readonly, symphony_auditor;
GRANT USAGE ON TYPE symphony.attempt_state
    TO symphony_control, symphony_executor, symphony_readonly, symphony_auditor;

-- ingest
GRANT EXECUTE ON FUNCTION symphony.enqueue_payment_outbox(text, text, text, text, jsonb)
    TO symphony_ingest;

-- executor
GRANT EXECUTE ON FUNCTION symphony.claim_outbox_batch(text, integer, integer)
    TO symphony_executor;
GRANT EXECUTE ON FUNCTION symphony.complete_outbox_batch(
    uuid[], uuid[], text[], text[], text[], boolean[], text[]) TO symphony_executor;
GRANT EXECUTE ON FUNCTION symphony.complete_outbox_attempt(
    uuid, uuid, text, text, text, boolean, text) TO symphony_executor;
GRANT EXECUTE ON FUNCTION symphony.repair_expired_leases(integer, integer)
    TO symphony_executor, symphony_control;
GRANT SELECT ON symphony.payment_rails, symphony.outbox_supervisor_status
    TO symphony_executor;

-- readers: every column but the lease tokens
GRANT SELECT (outbox_id, participant_id, sequence_id, attempt_count, last_attempt_no,
              next_attempt_at, claimed_by, lease_expires_at, claimed_at, needs_lookup,
              last_error_code, created_at, updated_at)
    ON symphony.payment_outbox_pending
    TO symphony_readonly, symphony_auditor, symphony_control;
GRANT SELECT (attempt_id, outbox_id, attempt_no, state, worker_id, error_code, error_detail,
              rail_transaction_id, recorded_at, recorded_by)
    ON symphony.payment_outbox_attempts
    TO symphony_readonly, symphony_auditor, symphony_control;
GRANT SELECT ON symphony.payment_instruction_registry, symphony.payment_rails,
                symphony.outbox_retry_policy, symphony.outbox_supervisor_status
    TO symphony_readonly, symphony_auditor, symphony_control;

-- control
GRANT SELECT ON symphony.participant_outbox_sequences TO symphony_control;
GRANT UPDATE (max_attempts, backoff_base_ms, backoff_max_ms, jitter_ratio, updated_at)
    ON symphony.outbox_retry_policy TO symphony_control;
