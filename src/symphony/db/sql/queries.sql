-- Runtime queries of Symphony Outbox. Each block is one statement, named by its header.
-- Parameters use psycopg's %(name)s form. Callers run them as a role through symphony.db.

-- name: enqueue_payment_outbox
-- Idempotent enqueue of one payment instruction (role: ingest).
SELECT outbox_id, sequence_id, state, created, created_at
  FROM symphony.enqueue_payment_outbox(
      %(instruction_id)s, %(idempotency_key)s, %(participant_id)s, %(rail_type)s,
      %(payload)s::jsonb);

-- name: claim_outbox_batch
-- Lease up to batch_size due items and append their DISPATCHING rows (role: executor).
SELECT outbox_id, lease_token, lease_expires_at, attempt_no, attempt_count, needs_lookup,
       participant_id, sequence_id, instruction_id, rail_type, payload
  FROM symphony.claim_outbox_batch(%(worker_id)s, %(batch_size)s, %(lease_seconds)s);

-- name: complete_outbox_batch
-- Record the outcome of many dispatches in one statement, each fenced by its lease token.
SELECT outbox_id, result, state, attempt_no, next_attempt_at
  FROM symphony.complete_outbox_batch(
      %(outbox_ids)s::uuid[], %(lease_tokens)s::uuid[], %(outcomes)s::text[],
      %(error_codes)s::text[], %(error_details)s::text[], %(ambiguous)s::boolean[],
      %(rail_transaction_ids)s::text[]);

-- name: complete_outbox_attempt
-- Record the outcome of one dispatch; a stale lease token is refused with SY200.
SELECT outbox_id, state, attempt_no, next_attempt_at
  FROM symphony.complete_outbox_attempt(
      %(outbox_id)s, %(lease_token)s, %(outcome)s, %(error_code)s, %(error_detail)s,
      %(ambiguous)s, %(rail_transaction_id)s);

-- name: repair_expired_leases
-- Return up to `limit` items whose lease expired (and was taken at least `threshold_seconds`
-- ago, when given) to PENDING, appending ZOMBIE_REQUEUE.
SELECT outbox_id, attempt_no, attempt_count, claimed_by, lease_expires_at
  FROM symphony.repair_expired_leases(%(limit)s, %(threshold_seconds)s);

-- name: count_zombies
-- Expired leases that await repair (read through the status view: the executor has no
-- privilege on the queue's lease columns).
SELECT zombies FROM symphony.outbox_supervisor_status;

-- name: supervisor_status
SELECT due, scheduled, dispatching, zombies, awaiting_lookup, under_review, pending_total,
       oldest_pending_at, dispatched_total, failed_total, observed_at
  FROM symphony.outbox_supervisor_status;

-- name: item_ledger
-- The full history of one item, oldest first (roles: readonly, auditor, control).
SELECT a.attempt_no, a.state::text AS state, a.worker_id, a.error_code, a.error_detail,
       a.rail_transaction_id, a.recorded_at
  FROM symphony.payment_outbox_attempts a
 WHERE a.outbox_id = %(outbox_id)s
 ORDER BY a.attempt_no;

-- name: item_summary
-- Where one item stands: its registry entry, its pending row if live, its terminal state.
-- (No sequence_id: readonly and auditor may not read a participant's volume.)
SELECT r.outbox_id, r.instruction_id, r.idempotency_key, r.participant_id,
       r.rail_type, r.payload, r.created_at,
       p.outbox_id IS NOT NULL AS pending,
       p.attempt_count, p.next_attempt_at, p.lease_expires_at, p.claimed_by,
       (SELECT t.state::text FROM symphony.payment_outbox_attempts t
         WHERE t.outbox_id = r.outbox_id AND t.state IN ('DISPATCHED', 'FAILED')) AS terminal_state
  FROM symphony.payment_instruction_registry r
  LEFT JOIN symphony.payment_outbox_pending p ON p.outbox_id = r.outbox_id
 WHERE r.outbox_id = %(outbox_id)s;

-- name: audit_illegal_transitions
-- Ledger rows that do not continue their item's history legally (should be none: I4, I5).
SELECT x.outbox_id, x.attempt_no, x.state, x.previous_state, x.previous_attempt_no
  FROM (
      SELECT a.outbox_id, a.attempt_no, a.state::text AS state,
             (lag(a.state) OVER w)::text AS previous_state,
             lag(a.attempt_no) OVER w AS previous_attempt_no
        FROM symphony.payment_outbox_attempts a
      WINDOW w AS (PARTITION BY a.outbox_id ORDER BY a.attempt_no)
  ) x
 WHERE x.attempt_no <> coalesce(x.previous_attempt_no, 0) + 1
    OR NOT CASE
        WHEN x.previous_state IS NULL THEN x.state = 'DISPATCHING'
        WHEN x.previous_state = 'DISPATCHING'
            THEN x.state IN ('DISPATCHED', 'RETRYABLE', 'FAILED', 'ZOMBIE_REQUEUE')
        WHEN x.previous_state IN ('RETRYABLE', 'ZOMBIE_REQUEUE') THEN x.state = 'DISPATCHING'
        ELSE false
    END
 ORDER BY x.outbox_id, x.attempt_no
 LIMIT %(limit)s;

-- name: audit_pending_mismatch
-- Items pending although terminal, or neither pending nor terminal (should be none: I7).
SELECT r.outbox_id,
       p.outbox_id IS NOT NULL AS pending,
       EXISTS (SELECT 1 FROM symphony.payment_outbox_attempts t
                WHERE t.outbox_id = r.outbox_id
                  AND t.state IN ('DISPATCHED', 'FAILED')) AS terminal
  FROM symphony.payment_instruction_registry r
  LEFT JOIN symphony.payment_outbox_pending p ON p.outbox_id = r.outbox_id
 WHERE (p.outbox_id IS NOT NULL) = EXISTS (
           SELECT 1 FROM symphony.payment_outbox_attempts t
            WHERE t.outbox_id = r.outbox_id AND t.state IN ('DISPATCHED', 'FAILED'))
 LIMIT %(limit)s;

-- name: audit_counts
SELECT (SELECT count(*) FROM symphony.payment_instruction_registry) AS items,
       (SELECT count(*) FROM symphony.payment_outbox_attempts) AS ledger_rows,
       (SELECT count(*) FROM symphony.payment_outbox_pending) AS pending;

-- name: retry_policy
-- The retry policy complete_outbox_batch applies (roles: control, readonly, auditor).
SELECT max_attempts, backoff_base_ms, backoff_max_ms, jitter_ratio, ambiguous_settle_ms,
       zombie_threshold_seconds, updated_at
  FROM symphony.outbox_retry_policy
 WHERE singleton;

-- name: set_retry_policy
-- Tune the retry policy (role: control; the table's CHECKs bound every value).
UPDATE symphony.outbox_retry_policy
   SET max_attempts = %(max_attempts)s, backoff_base_ms = %(backoff_base_ms)s,
       backoff_max_ms = %(backoff_max_ms)s, jitter_ratio = %(jitter_ratio)s,
       ambiguous_settle_ms = %(ambiguous_settle_ms)s, updated_at = now()
 WHERE singleton
RETURNING max_attempts, backoff_base_ms, backoff_max_ms, jitter_ratio, ambiguous_settle_ms,
          zombie_threshold_seconds, updated_at;

-- name: set_zombie_threshold
-- The zombie threshold leases are bound to (role: control; `symphony migrate` sets it from
-- ZOMBIE_THRESHOLD_SECONDS).
UPDATE symphony.outbox_retry_policy
   SET zombie_threshold_seconds = %(zombie_threshold_seconds)s, updated_at = now()
 WHERE singleton
RETURNING zombie_threshold_seconds;

-- name: lease_policy
-- What a worker checks at start: its lease must fit the database's zombie threshold
-- (role: executor).
SELECT zombie_threshold_seconds, ambiguous_settle_ms
  FROM symphony.outbox_retry_policy
 WHERE singleton;

-- name: count_still_pending
-- How many of the given items are not terminal yet (roles: readonly, auditor, control).
SELECT count(*) AS pending
  FROM symphony.payment_outbox_pending p
 WHERE p.outbox_id = ANY(%(outbox_ids)s::uuid[]);

-- name: review_queue
-- Items under review, oldest first: may have been executed, and the rail has not settled
-- them (roles: control, readonly, auditor).
SELECT p.outbox_id, p.participant_id, p.review_reason, p.review_since, p.attempt_count,
       p.last_error_code, r.instruction_id, r.rail_type, r.payload
  FROM symphony.payment_outbox_pending p
  JOIN symphony.payment_instruction_registry r ON r.outbox_id = p.outbox_id
 WHERE p.review_reason IS NOT NULL
 ORDER BY p.review_since, p.outbox_id
 LIMIT %(limit)s;

-- name: login_identity
-- Who a new connection logged in as, before any role switch (run by symphony.db on the probe
-- of every pool): the login, whether it is more than a principal should be, and which of the
-- given roles it may SET ROLE to (directly or through a chain of SET grants).
SELECT session_user::text AS login,
       r.rolsuper AS superuser,
       r.rolcreaterole AS createrole,
       r.rolbypassrls AS bypassrls,
       ARRAY(SELECT m.rolname::text
               FROM pg_catalog.pg_roles m
              WHERE m.rolname = ANY(%(roles)s::text[])
                AND pg_catalog.pg_has_role(session_user, m.oid, 'SET')
              ORDER BY m.rolname) AS settable
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = session_user;

-- name: resolve_outbox_review
-- An operator records the rail's confirmed outcome of an item under review (role: control).
SELECT outbox_id, decision, state, attempt_no
  FROM symphony.resolve_outbox_review(
      %(outbox_id)s, %(decision)s, %(decided_by)s, %(reason)s, %(rail_transaction_id)s);

-- name: schema_migrations_readable
-- Whether the current role may read the migration record (granted to every runtime role by
-- 0006; absent before the first migration). Catalog lookups only, so it never fails itself.
SELECT EXISTS (
           SELECT 1
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'symphony_meta' AND c.relname = 'schema_migrations'
              AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
              AND pg_catalog.has_table_privilege(c.oid, 'SELECT')) AS readable;

-- name: schema_migrations
-- The applied migrations and their checksums (any runtime role, from 0006).
SELECT version, checksum FROM symphony_meta.schema_migrations ORDER BY version;

-- name: ops_recent_failures
-- The newest FAILED items, newest first, with the error the rail or the retry ceiling gave
-- (roles: readonly, auditor, control). Reads the terminal-rows index backwards from its
-- FAILED end and stops at the limit, so the cost is the limit, not the ledger. (No
-- sequence_id: readonly may not read a participant's volume.)
SELECT a.outbox_id, a.attempt_no, a.error_code, a.error_detail, a.worker_id,
       a.recorded_at AS failed_at, r.participant_id, r.instruction_id, r.rail_type,
       r.created_at
  FROM symphony.payment_outbox_attempts a
  JOIN symphony.payment_instruction_registry r ON r.outbox_id = a.outbox_id
 WHERE a.state = 'FAILED'
 ORDER BY a.recorded_at DESC, a.attempt_id DESC
 LIMIT %(limit)s;

-- name: ops_throughput
-- Terminal ledger rows per minute over the last `minutes` minutes, oldest first, one row per
-- minute (zero where nothing ended); the last minute is the one in progress (roles: readonly,
-- auditor, control). The window's start is written out (not joined from a CTE) so that it is
-- an index condition: only the window's rows of the terminal-rows index are read.
SELECT m.minute, coalesce(c.dispatched, 0) AS dispatched, coalesce(c.failed, 0) AS failed
  FROM generate_series(
           date_trunc('minute', now()) - (%(minutes)s::integer - 1) * interval '1 minute',
           date_trunc('minute', now()), interval '1 minute') AS m(minute)
  LEFT JOIN (
      SELECT date_trunc('minute', a.recorded_at) AS minute,
             count(*) FILTER (WHERE a.state = 'DISPATCHED') AS dispatched,
             count(*) FILTER (WHERE a.state = 'FAILED') AS failed
        FROM symphony.payment_outbox_attempts a
       WHERE a.state IN ('DISPATCHED', 'FAILED')
         AND a.recorded_at >= date_trunc('minute', now())
                              - (%(minutes)s::integer - 1) * interval '1 minute'
       GROUP BY 1
  ) c ON c.minute = m.minute
 ORDER BY m.minute;

-- name: set_local_statement_timeout
-- Bound the rest of this transaction's statements (a scrape must not outlive its caller).
SELECT set_config('statement_timeout', %(timeout_ms)s::text, true) AS statement_timeout;

-- name: outbox_metrics
-- Everything a metrics scrape reports, in one statement: the supervisor view and the ledger's
-- rows by state (roles: readonly, auditor, control). The ledger count grows with the history;
-- the caller bounds it with set_local_statement_timeout.
SELECT s.due, s.scheduled, s.dispatching, s.zombies, s.awaiting_lookup, s.under_review,
       s.pending_total,
       s.oldest_pending_at, s.dispatched_total, s.failed_total, s.observed_at,
       coalesce((SELECT jsonb_object_agg(x.state, x.n)
                   FROM (SELECT a.state::text AS state, count(*) AS n
                           FROM symphony.payment_outbox_attempts a
                          GROUP BY a.state) x), '{}'::jsonb) AS ledger_rows_by_state
  FROM symphony.outbox_supervisor_status s;

-- participants and API tokens (role: control, except where noted) ----------------------------

-- name: add_participant
SELECT participant_id, display_name, status, created_at, revoked_at
  FROM symphony.add_participant(%(participant_id)s, %(display_name)s);

-- name: list_participants
SELECT participant_id, display_name, status, created_at, revoked_at
  FROM symphony.participants
 ORDER BY participant_id;

-- name: revoke_participant
-- Also revokes every token of the participant.
SELECT participant_id, display_name, status, created_at, revoked_at
  FROM symphony.revoke_participant(%(participant_id)s);

-- name: issue_api_token
-- The application sends only the salt and sha256(salt || secret); the secret stays with it.
SELECT token_id, kind, participant_id, label, created_at
  FROM symphony.issue_api_token(%(token_id)s, %(kind)s, %(participant_id)s, %(label)s,
                                %(secret_salt)s, %(secret_hash)s);

-- name: revoke_api_token
SELECT token_id, revoked_at FROM symphony.revoke_api_token(%(token_id)s);

-- name: api_token_salt
-- The salt of a live token, or NULL (role: readonly).
SELECT symphony.api_token_salt(%(token_id)s) AS secret_salt;

-- name: authenticate_api_token
-- One row for a live token with this hash, else none (role: readonly).
SELECT token_id, kind, participant_id
  FROM symphony.authenticate_api_token(%(token_id)s, %(secret_hash)s);

-- participant-scoped reads (role: readonly) -----------------------------------------------------

-- name: participant_payment
SELECT outbox_id, instruction_id, idempotency_key, rail_type, payload, state, attempt_count,
       next_attempt_at, last_error_code, created_at, updated_at, terminal_at
  FROM symphony.participant_payment(%(participant_id)s, %(outbox_id)s);

-- name: participant_payment_attempts
SELECT attempt_no, state, error_code, error_detail, rail_transaction_id, recorded_at
  FROM symphony.participant_payment_attempts(%(participant_id)s, %(outbox_id)s);

-- name: participant_payments
SELECT outbox_id, instruction_id, idempotency_key, rail_type, payload, state, attempt_count,
       next_attempt_at, last_error_code, created_at, updated_at, terminal_at
  FROM symphony.participant_payments(%(participant_id)s, %(state)s, %(after)s::uuid,
                                     %(limit)s);

-- name: enqueue_payment_outbox_batch
-- Idempotent enqueue of many instructions in one transaction (role: ingest); one row per item
-- in the order given, a refused item with its sqlstate and constraint instead of an id.
SELECT item, outbox_id, sequence_id, state, created, created_at, error_sqlstate,
       error_constraint
  FROM symphony.enqueue_payment_outbox_batch(
      %(instruction_ids)s::text[], %(idempotency_keys)s::text[], %(participant_ids)s::text[],
      %(rail_types)s::text[], %(payloads)s::jsonb[], %(wake_after_commit)s);

-- name: wake_outbox_workers
-- Wake the workers after a batch enqueued with wake_after_commit committed (role: ingest).
SELECT symphony.wake_outbox_workers();
