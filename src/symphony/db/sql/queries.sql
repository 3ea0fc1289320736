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

-- name: claim_outbox_batch_buckets
-- The claim restricted to one bucket range (a worker of a fleet that splits the buckets):
-- every statement names the range's participants, so it stays on the shard that holds them.
SELECT outbox_id, lease_token, lease_expires_at, attempt_no, attempt_count, needs_lookup,
       participant_id, sequence_id, instruction_id, rail_type, payload
  FROM symphony.claim_outbox_batch(%(worker_id)s, %(batch_size)s, %(lease_seconds)s,
                                   %(bucket_from)s::integer, %(bucket_to)s::integer);

-- name: complete_outbox_batch_buckets
-- The batch completion restricted to one bucket range: an item outside it is FENCED.
SELECT outbox_id, result, state, attempt_no, next_attempt_at
  FROM symphony.complete_outbox_batch(
      %(outbox_ids)s::uuid[], %(lease_tokens)s::uuid[], %(outcomes)s::text[],
      %(error_codes)s::text[], %(error_details)s::text[], %(ambiguous)s::boolean[],
      %(rail_transaction_ids)s::text[], %(bucket_from)s::integer, %(bucket_to)s::integer);

-- name: repair_expired_leases_buckets
-- The zombie repair restricted to one bucket range.
SELECT outbox_id, attempt_no, attempt_count, claimed_by, lease_expires_at
  FROM symphony.repair_expired_leases(%(limit)s, %(threshold_seconds)s::integer,
                                      %(bucket_from)s::integer, %(bucket_to)s::integer);

-- name: participant_buckets
-- Which routing bucket each participant's items are in (roles: control, readonly, auditor).
SELECT participant_id, bucket
  FROM symphony.participants
 ORDER BY bucket, participant_id;

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
       p.review_reason, p.review_since,
       (SELECT t.state::text FROM symphony.payment_outbox_attempts t
         WHERE t.outbox_id = r.outbox_id
           AND t.state IN ('DISPATCHED', 'FAILED', 'CANCELED')) AS terminal_state
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
        WHEN x.previous_state IS NULL THEN x.state IN ('DISPATCHING', 'CANCELED')
        WHEN x.previous_state = 'DISPATCHING'
            THEN x.state IN ('DISPATCHED', 'RETRYABLE', 'FAILED', 'ZOMBIE_REQUEUE')
        WHEN x.previous_state = 'RETRYABLE' THEN x.state IN ('DISPATCHING', 'CANCELED')
        WHEN x.previous_state = 'ZOMBIE_REQUEUE' THEN x.state = 'DISPATCHING'
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
                  AND t.state IN ('DISPATCHED', 'FAILED', 'CANCELED')) AS terminal
  FROM symphony.payment_instruction_registry r
  LEFT JOIN symphony.payment_outbox_pending p ON p.outbox_id = r.outbox_id
 WHERE (p.outbox_id IS NOT NULL) = EXISTS (
           SELECT 1 FROM symphony.payment_outbox_attempts t
            WHERE t.outbox_id = r.outbox_id AND t.state IN ('DISPATCHED', 'FAILED', 'CANCELED'))
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
-- given roles it may SET ROLE to (directly or through a chain of SET grants). PostgreSQL 15
-- has no 'SET' privilege for pg_has_role (it raises): there every membership, direct or
-- through a chain, allows SET ROLE, so 'MEMBER' is the same question. The CASE evaluates
-- only the branch the server understands (pg_has_role is not folded at plan time).
SELECT session_user::text AS login,
       r.rolsuper AS superuser,
       r.rolcreaterole AS createrole,
       r.rolbypassrls AS bypassrls,
       ARRAY(SELECT m.rolname::text
               FROM pg_catalog.pg_roles m
              WHERE m.rolname = ANY(%(roles)s::text[])
                AND CASE WHEN pg_catalog.current_setting('server_version_num')::integer >= 160000
                         THEN pg_catalog.pg_has_role(session_user, m.oid, 'SET')
                         ELSE pg_catalog.pg_has_role(session_user, m.oid, 'MEMBER')
                    END
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

-- name: schema_objects_readable
-- Whether the current role may read the repeatable objects' record (granted by the migrator
-- to whoever may read the migration record; absent before this code first migrated).
SELECT EXISTS (
           SELECT 1
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'symphony_meta' AND c.relname = 'schema_objects'
              AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')
              AND pg_catalog.has_table_privilege(c.oid, 'SELECT')) AS readable;

-- name: schema_objects
-- The repeatable objects applied and their checksums (any runtime role).
SELECT object, checksum FROM symphony_meta.schema_objects ORDER BY object;

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
-- an index condition: only the window's rows of the terminal-rows index are read. One range
-- per terminal state (state = X AND recorded_at >= start) rather than state IN (...): before
-- PostgreSQL 17 the planner prices an IN list on the index's leading column as a scan of every
-- terminal row and reads another index instead.
SELECT m.minute, coalesce(c.dispatched, 0) AS dispatched, coalesce(c.failed, 0) AS failed
  FROM generate_series(
           date_trunc('minute', now()) - (%(minutes)s::integer - 1) * interval '1 minute',
           date_trunc('minute', now()), interval '1 minute') AS m(minute)
  LEFT JOIN (
      SELECT date_trunc('minute', t.recorded_at) AS minute,
             count(*) FILTER (WHERE t.state = 'DISPATCHED') AS dispatched,
             count(*) FILTER (WHERE t.state = 'FAILED') AS failed
        FROM (SELECT a.state, a.recorded_at
                FROM symphony.payment_outbox_attempts a
               WHERE a.state = 'DISPATCHED'
                 AND a.recorded_at >= date_trunc('minute', now())
                                      - (%(minutes)s::integer - 1) * interval '1 minute'
              UNION ALL
              SELECT a.state, a.recorded_at
                FROM symphony.payment_outbox_attempts a
               WHERE a.state = 'FAILED'
                 AND a.recorded_at >= date_trunc('minute', now())
                                      - (%(minutes)s::integer - 1) * interval '1 minute'
             ) t
       GROUP BY 1
  ) c ON c.minute = m.minute
 ORDER BY m.minute;

-- name: set_local_statement_timeout
-- Bound the rest of this transaction's statements (a scrape must not outlive its caller).
SELECT set_config('statement_timeout', %(timeout_ms)s::text, true) AS statement_timeout;

-- name: outbox_metrics
-- Everything a metrics scrape reports, in one statement: the supervisor view, the ledger's
-- rows by state and the worker fleet (live, stale, buckets no live worker covers) (roles:
-- readonly, auditor, control). The ledger count grows with the history;
-- the caller bounds it with set_local_statement_timeout.
SELECT s.due, s.scheduled, s.dispatching, s.zombies, s.awaiting_lookup, s.under_review,
       s.pending_total,
       s.oldest_pending_at, s.dispatched_total, s.failed_total, s.observed_at,
       coalesce((SELECT jsonb_object_agg(x.state, x.n)
                   FROM (SELECT a.state::text AS state, count(*) AS n
                           FROM symphony.payment_outbox_attempts a
                          GROUP BY a.state) x), '{}'::jsonb) AS ledger_rows_by_state,
       (SELECT count(*) FROM symphony_ops.worker_heartbeats h
         WHERE h.heartbeat_at + make_interval(secs => h.stale_after_seconds) >= now())
           AS fleet_live_workers,
       (SELECT count(*) FROM symphony_ops.worker_heartbeats h
         WHERE h.heartbeat_at + make_interval(secs => h.stale_after_seconds) < now())
           AS fleet_stale_workers,
       (SELECT count(*) FROM generate_series(0, 255) AS b(bucket)
         WHERE NOT EXISTS (
             SELECT 1 FROM symphony_ops.worker_heartbeats h
              WHERE h.heartbeat_at + make_interval(secs => h.stale_after_seconds) >= now()
                AND b.bucket BETWEEN h.bucket_from AND h.bucket_to)) AS fleet_uncovered_buckets
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

-- name: participant_pending_count
-- How many of the participant's payments are still pending (queued, waiting out a retry,
-- leased or under review): what a revocation leaves to go on (role: control). Run once per
-- revocation, not a hot query.
SELECT count(*) AS pending
  FROM symphony.payment_outbox_pending
 WHERE participant_id = %(participant_id)s;

-- name: issue_api_token
-- The application sends only the salt and sha256(salt || secret); the secret stays with it.
-- scope: VIEWER or OPERATOR for an operator token, NULL for a participant's.
SELECT token_id, kind, participant_id, label, scope, created_at
  FROM symphony.issue_scoped_api_token(%(token_id)s, %(kind)s, %(participant_id)s,
                                       %(label)s, %(secret_salt)s, %(secret_hash)s, %(scope)s);

-- name: revoke_api_token
SELECT token_id, revoked_at FROM symphony.revoke_api_token(%(token_id)s);

-- name: api_token_salt
-- The salt of a live token, or NULL (role: readonly).
SELECT symphony.api_token_salt(%(token_id)s) AS secret_salt;

-- name: authenticate_api_token
-- One row for a live token with this hash, else none (role: readonly).
SELECT token_id, kind, participant_id, scope, label
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

-- name: participant_events
-- The participant's events after a sequence number, oldest first (role: readonly).
SELECT event_seq, event_id, event_type, outbox_id, payload, created_at
  FROM symphony.participant_events(%(participant_id)s, %(after)s, %(limit)s, %(event_type)s);

-- the auditor's checks (role: auditor; `symphony audit verify`, symphony.outbox.audit) --------
-- Every check returns the same columns: outbox_id, attempt_no, subject (what the problem is
-- about when it is not one ledger row: a participant, a trigger, a checkpoint), problem (a
-- code), total (violations found, of which at most `limit` rows come back). `since` NULL
-- checks everything; otherwise the items registered, or with a ledger row, at or after it.
-- The checks recompute in plain SQL, with built-in functions only: none of them trusts a
-- function of the schema it audits, except I8 and I9, whose functions read what the auditor
-- may not (sequence numbers, lease tokens) and return only ids and problem codes.

-- name: audit_work_mem
-- Memory for the audit's sorts and hashes, for this transaction only: a million-row ledger
-- then sorts in memory instead of spilling to disk (role: auditor).
SELECT set_config('work_mem', %(work_mem)s, true) AS work_mem;

-- name: audit_checkpoint_scope
-- Where an audit from the latest checkpoint starts (role: auditor): the latest checkpoint
-- (no row: no checkpoint yet), then audit_checkpoint_since.
SELECT c.checkpoint_id, c.up_to_attempt_id, c.taken_at
  FROM symphony.ledger_checkpoints c
 ORDER BY c.checkpoint_id DESC
 LIMIT 1;

-- name: audit_checkpoint_since
-- The checkpoint's time, or the earliest recorded_at of a ledger row numbered above it if
-- earlier (a row's recorded_at is its transaction's start, which may precede the checkpoint it
-- committed after). Reads only the rows above the checkpoint through the primary key's range:
-- the cost follows what was written since, not the ledger's size. The bound is a parameter
-- (not a column of a join) so the planner sees how few rows lie above it (role: auditor).
SELECT least(%(taken_at)s::timestamptz,
             (SELECT min(x.recorded_at)
                FROM (SELECT a.recorded_at FROM symphony.payment_outbox_attempts a
                       WHERE a.attempt_id > %(up_to_attempt_id)s::bigint
                       OFFSET 0) x)) AS since;

-- name: audit_scope_ids
-- The items an incremental audit checks (`since` given): registered, or with a ledger row
-- recorded, at or after `since`, and from a checkpoint every live item. Computed once per
-- audit through the registry's and the ledger's time indexes and passed to every check as an
-- array, which each check probes through its table's outbox index (an IN over a CTE next to
-- `since IS NULL OR ...` is planned as a scan of the whole table).
SELECT coalesce(array_agg(x.outbox_id), '{}') AS scope_ids,
       coalesce((SELECT array_agg(DISTINCT r.participant_id)
                   FROM symphony.payment_instruction_registry r
                  WHERE r.outbox_id = ANY (array_agg(x.outbox_id))), '{}') AS scope_participants
  FROM (SELECT r.outbox_id FROM symphony.payment_instruction_registry r
         WHERE r.created_at >= %(since)s::timestamptz
        UNION
        SELECT a.outbox_id FROM symphony.payment_outbox_attempts a
         WHERE a.recorded_at >= %(since)s::timestamptz
        UNION
        SELECT p.outbox_id FROM symphony.payment_outbox_pending p
         WHERE %(from_checkpoint)s::boolean) x;

-- name: audit_scope_counts
SELECT (SELECT count(*) FROM symphony.payment_instruction_registry r
         WHERE %(since)s::timestamptz IS NULL
            OR r.outbox_id = ANY (%(scope_ids)s::uuid[])) AS items,
       (SELECT count(*) FROM symphony.payment_outbox_attempts a
         WHERE %(since)s::timestamptz IS NULL
            OR a.outbox_id = ANY (%(scope_ids)s::uuid[])) AS ledger_rows,
       (SELECT count(*) FROM symphony.payment_outbox_pending p
         WHERE %(since)s::timestamptz IS NULL
            OR p.outbox_id = ANY (%(scope_ids)s::uuid[])) AS pending,
       (SELECT count(*) FROM symphony.ledger_checkpoints) AS checkpoints,
       now() AS snapshot_at;

-- name: audit_registry_identity
-- I1: one item per (participant_id, instruction_id, idempotency_key); outbox_id unique. A full
-- audit counts each key over the whole registry; an incremental one probes the keys of the
-- items in scope (one branch runs: the other's condition is false for the given `since`).
WITH problems AS (
    -- Hash aggregates over the registry, then back to the few rows of a duplicated key.
    SELECT r.outbox_id, r.participant_id, 'DUPLICATE_OUTBOX_ID' AS problem
      FROM symphony.payment_instruction_registry r
     WHERE %(since)s::timestamptz IS NULL
       AND r.outbox_id IN (SELECT d.outbox_id FROM symphony.payment_instruction_registry d
                            GROUP BY d.outbox_id HAVING count(*) > 1)
    UNION ALL
    SELECT r.outbox_id, r.participant_id, 'DUPLICATE_IDEMPOTENCY_KEY'
      FROM symphony.payment_instruction_registry r
      JOIN (SELECT d.participant_id, d.instruction_id, d.idempotency_key
              FROM symphony.payment_instruction_registry d
             GROUP BY d.participant_id, d.instruction_id, d.idempotency_key
            HAVING count(*) > 1) k
        ON k.participant_id = r.participant_id AND k.instruction_id = r.instruction_id
       AND k.idempotency_key = r.idempotency_key
     WHERE %(since)s::timestamptz IS NULL
    UNION ALL
    SELECT r.outbox_id, r.participant_id,
           CASE
               WHEN (SELECT count(*) FROM symphony.payment_instruction_registry o
                      WHERE o.outbox_id = r.outbox_id) > 1
                   THEN 'DUPLICATE_OUTBOX_ID'
               ELSE 'DUPLICATE_IDEMPOTENCY_KEY'
           END
      FROM symphony.payment_instruction_registry r
     WHERE %(since)s::timestamptz IS NOT NULL
       AND r.outbox_id = ANY (%(scope_ids)s::uuid[])
       AND ((SELECT count(*) FROM symphony.payment_instruction_registry o
              WHERE o.outbox_id = r.outbox_id) > 1
            OR EXISTS (SELECT 1 FROM symphony.payment_instruction_registry o
                        WHERE o.participant_id = r.participant_id
                          AND o.instruction_id = r.instruction_id
                          AND o.idempotency_key = r.idempotency_key
                          AND o.outbox_id <> r.outbox_id))
)
SELECT x.outbox_id, NULL::integer AS attempt_no, x.participant_id AS subject, x.problem,
       count(*) OVER () AS total
  FROM problems x
 ORDER BY x.outbox_id
 LIMIT %(limit)s;

-- name: audit_one_pending_row
-- I2: at most one pending row per outbox_id.
SELECT p.outbox_id, NULL::integer AS attempt_no, NULL::text AS subject,
       'DUPLICATE_PENDING_ROW' AS problem, count(*) OVER () AS total
  FROM symphony.payment_outbox_pending p
 WHERE %(since)s::timestamptz IS NULL OR p.outbox_id = ANY (%(scope_ids)s::uuid[])
 GROUP BY p.outbox_id
HAVING count(*) > 1
 ORDER BY p.outbox_id
 LIMIT %(limit)s;

-- name: audit_append_only
-- I3, from the catalog: the history tables' triggers exist, call the right function and fire
-- ALWAYS (also where session_replication_role = replica); no runtime role, login principal
-- or PUBLIC may write, change or remove their rows. (`since` does not apply.)
WITH expected (table_name, trigger_name, function_name) AS (
    VALUES ('payment_outbox_attempts', 'payment_outbox_attempts_append_only',
            'refuse_history_rewrite'),
           ('payment_outbox_attempts', 'payment_outbox_attempts_no_truncate',
            'refuse_history_rewrite'),
           ('payment_outbox_attempts', 'payment_outbox_attempts_legal_transition',
            'check_attempt_sequence'),
           ('payment_outbox_attempts', 'payment_outbox_attempts_terminal_leaves_pending',
            'check_pending_matches_ledger'),
           ('payment_outbox_attempts', 'payment_outbox_attempts_seal', 'seal_attempt'),
           ('payment_outbox_attempts', 'payment_outbox_attempts_00_writer_xid',
            'ledger_writer_xid'),
           ('payment_outbox_attempts', 'payment_outbox_attempts_cancel_is_clean',
            'check_cancel_is_clean'),
           ('payment_instruction_registry', 'payment_instruction_registry_append_only',
            'refuse_history_rewrite'),
           ('payment_instruction_registry', 'payment_instruction_registry_no_truncate',
            'refuse_history_rewrite'),
           ('payment_instruction_registry', 'payment_instruction_registry_seal',
            'seal_instruction'),
           ('outbox_review_decisions', 'outbox_review_decisions_append_only',
            'refuse_history_rewrite'),
           ('outbox_review_decisions', 'outbox_review_decisions_no_truncate',
            'refuse_history_rewrite'),
           ('outbox_lookup_marks', 'outbox_lookup_marks_append_only', 'refuse_history_rewrite'),
           ('outbox_lookup_marks', 'outbox_lookup_marks_no_truncate', 'refuse_history_rewrite'),
           ('ledger_checkpoints', 'ledger_checkpoints_append_only', 'refuse_history_rewrite'),
           ('ledger_checkpoints', 'ledger_checkpoints_no_truncate', 'refuse_history_rewrite'),
           ('ledger_checkpoint_heads', 'ledger_checkpoint_heads_append_only',
            'refuse_history_rewrite'),
           ('ledger_checkpoint_heads', 'ledger_checkpoint_heads_no_truncate',
            'refuse_history_rewrite'),
           ('payment_outbox_pending', 'payment_outbox_pending_mark_lookup',
            'mark_lookup_needed'),
           ('payment_events', 'payment_events_append_only', 'refuse_history_rewrite'),
           ('payment_events', 'payment_events_no_truncate', 'refuse_history_rewrite'),
           ('payment_outbox_pending', 'payment_outbox_pending_emit_created',
            'emit_created_events'),
           ('payment_outbox_attempts', 'payment_outbox_attempts_emit_events',
            'emit_ledger_events')
),
history (table_name) AS (
    VALUES ('payment_outbox_attempts'), ('payment_instruction_registry'),
           ('outbox_review_decisions'), ('outbox_lookup_marks'), ('ledger_checkpoints'),
           ('ledger_checkpoint_heads'), ('payment_events')
),
grantees (grantee) AS (
    VALUES ('symphony_control'), ('symphony_ingest'), ('symphony_executor'),
           ('symphony_readonly'), ('symphony_auditor'), ('symphony_control_svc'),
           ('symphony_ingest_svc'), ('symphony_executor_svc'), ('symphony_reader_svc'),
           ('symphony_api_svc'), ('public')
),
privileges (privilege) AS (
    VALUES ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')
),
problems AS (
    SELECT e.table_name || '.' || e.trigger_name AS subject,
           CASE
               WHEN t.oid IS NULL THEN 'TRIGGER_MISSING'
               WHEN t.tgenabled <> 'A' THEN 'TRIGGER_NOT_ENABLED_ALWAYS'
               WHEN f.proname IS DISTINCT FROM e.function_name THEN 'TRIGGER_FUNCTION_CHANGED'
           END AS problem
      FROM expected e
      LEFT JOIN pg_catalog.pg_trigger t
        ON t.tgname = e.trigger_name
       AND t.tgrelid = pg_catalog.to_regclass('symphony.' || e.table_name)
      LEFT JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid
    UNION ALL
    SELECT g.grantee || ' holds ' || p.privilege || ' on ' || h.table_name, 'PRIVILEGE_GRANTED'
      FROM history h
     CROSS JOIN grantees g
     CROSS JOIN privileges p
     WHERE pg_catalog.to_regclass('symphony.' || h.table_name) IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles ro
                    WHERE ro.rolname = g.grantee OR g.grantee = 'public')
       AND (pg_catalog.has_table_privilege(g.grantee, 'symphony.' || h.table_name,
                                           p.privilege)
            OR (p.privilege IN ('INSERT', 'UPDATE')
                AND pg_catalog.has_any_column_privilege(g.grantee, 'symphony.' || h.table_name,
                                                        p.privilege)))
)
SELECT NULL::uuid AS outbox_id, NULL::integer AS attempt_no, x.subject, x.problem,
       count(*) OVER () AS total
  FROM problems x
 WHERE x.problem IS NOT NULL
 ORDER BY x.subject
 LIMIT %(limit)s;

-- name: audit_attempt_numbering
-- I4: attempt_no runs 1, 2, 3, ... per item; a pending row's attempt_count is the number of
-- its DISPATCHING rows and its last_attempt_no its newest attempt_no.
WITH numbered AS (
    SELECT a.outbox_id, a.attempt_no,
           lag(a.attempt_no) OVER (PARTITION BY a.outbox_id ORDER BY a.attempt_no) AS previous_no
      FROM symphony.payment_outbox_attempts a
     WHERE %(since)s::timestamptz IS NULL OR a.outbox_id = ANY (%(scope_ids)s::uuid[])
),
live AS (
    SELECT p.outbox_id, p.attempt_count, p.last_attempt_no
      FROM symphony.payment_outbox_pending p
     WHERE %(since)s::timestamptz IS NULL OR p.outbox_id = ANY (%(scope_ids)s::uuid[])
),
live_ledger AS (
    SELECT a.outbox_id, count(*) FILTER (WHERE a.state = 'DISPATCHING') AS dispatching,
           max(a.attempt_no) AS last_no
      FROM symphony.payment_outbox_attempts a
     WHERE a.outbox_id IN (SELECT l.outbox_id FROM live l)
     GROUP BY a.outbox_id
),
problems AS (
    SELECT n.outbox_id, n.attempt_no,
           CASE
               WHEN n.previous_no IS NULL AND n.attempt_no <> 1 THEN 'FIRST_ATTEMPT_NOT_1'
               WHEN n.previous_no = n.attempt_no THEN 'DUPLICATE_ATTEMPT_NO'
               WHEN n.attempt_no <> n.previous_no + 1 THEN 'ATTEMPT_GAP'
           END AS problem
      FROM numbered n
    UNION ALL
    SELECT l.outbox_id, NULL::integer,
           CASE
               WHEN l.attempt_count <> coalesce(c.dispatching, 0) THEN 'ATTEMPT_COUNT_MISMATCH'
               WHEN l.last_attempt_no <> coalesce(c.last_no, 0) THEN 'LAST_ATTEMPT_NO_MISMATCH'
           END
      FROM live l
      LEFT JOIN live_ledger c ON c.outbox_id = l.outbox_id
)
SELECT x.outbox_id, x.attempt_no, NULL::text AS subject, x.problem, count(*) OVER () AS total
  FROM problems x
 WHERE x.problem IS NOT NULL
 ORDER BY x.outbox_id, x.attempt_no
 LIMIT %(limit)s;

-- name: audit_legal_transitions
-- I5: the first row is DISPATCHING or CANCELED; DISPATCHED, RETRYABLE, FAILED and
-- ZOMBIE_REQUEUE follow a DISPATCHING; DISPATCHING follows RETRYABLE or ZOMBIE_REQUEUE;
-- CANCELED follows a RETRYABLE (a clean one: I10 checks that); nothing follows a terminal.
WITH ordered AS (
    SELECT a.outbox_id, a.attempt_no, a.state::text AS state,
           (lag(a.state) OVER (PARTITION BY a.outbox_id ORDER BY a.attempt_no))::text
               AS previous_state
      FROM symphony.payment_outbox_attempts a
     WHERE %(since)s::timestamptz IS NULL OR a.outbox_id = ANY (%(scope_ids)s::uuid[])
)
SELECT x.outbox_id, x.attempt_no,
       coalesce(x.previous_state, '(start)') || ' -> ' || x.state AS subject,
       'ILLEGAL_TRANSITION' AS problem, count(*) OVER () AS total
  FROM ordered x
 WHERE NOT CASE
        WHEN x.previous_state IS NULL THEN x.state IN ('DISPATCHING', 'CANCELED')
        WHEN x.previous_state = 'DISPATCHING'
            THEN x.state IN ('DISPATCHED', 'RETRYABLE', 'FAILED', 'ZOMBIE_REQUEUE')
        WHEN x.previous_state = 'RETRYABLE' THEN x.state IN ('DISPATCHING', 'CANCELED')
        WHEN x.previous_state = 'ZOMBIE_REQUEUE' THEN x.state = 'DISPATCHING'
        ELSE false
    END
 ORDER BY x.outbox_id, x.attempt_no
 LIMIT %(limit)s;

-- name: audit_one_terminal
-- I6: at most one DISPATCHED row and at most one terminal row (DISPATCHED, FAILED, CANCELED)
-- per item.
SELECT a.outbox_id, NULL::integer AS attempt_no, NULL::text AS subject,
       CASE WHEN count(*) FILTER (WHERE a.state = 'DISPATCHED') > 1 THEN 'DUPLICATE_DISPATCHED'
            ELSE 'DUPLICATE_TERMINAL' END AS problem,
       count(*) OVER () AS total
  FROM symphony.payment_outbox_attempts a
 WHERE a.state IN ('DISPATCHED', 'FAILED', 'CANCELED')
   AND (%(since)s::timestamptz IS NULL OR a.outbox_id = ANY (%(scope_ids)s::uuid[]))
 GROUP BY a.outbox_id
HAVING count(*) > 1
 ORDER BY a.outbox_id
 LIMIT %(limit)s;

-- name: audit_pending_matches_ledger
-- I7: an item is pending if and only if its ledger has no terminal row; no pending row,
-- ledger row, review decision or lookup mark belongs to an item the registry does not know.
WITH items AS (
    SELECT r.outbox_id FROM symphony.payment_instruction_registry r
     WHERE %(since)s::timestamptz IS NULL OR r.outbox_id = ANY (%(scope_ids)s::uuid[])
),
problems AS (
    SELECT x.outbox_id,
           CASE
               WHEN x.pending AND x.terminal THEN 'PENDING_AND_TERMINAL'
               WHEN NOT x.pending AND NOT x.terminal THEN 'NEITHER_PENDING_NOR_TERMINAL'
           END AS problem
      FROM (SELECT i.outbox_id,
                   EXISTS (SELECT 1 FROM symphony.payment_outbox_pending p
                            WHERE p.outbox_id = i.outbox_id) AS pending,
                   EXISTS (SELECT 1 FROM symphony.payment_outbox_attempts t
                            WHERE t.outbox_id = i.outbox_id
                              AND t.state IN ('DISPATCHED', 'FAILED', 'CANCELED')) AS terminal
              FROM items i) x
    UNION ALL
    SELECT p.outbox_id, 'PENDING_WITHOUT_REGISTRY' FROM symphony.payment_outbox_pending p
     WHERE NOT EXISTS (SELECT 1 FROM symphony.payment_instruction_registry r
                        WHERE r.outbox_id = p.outbox_id)
    UNION ALL
    SELECT a.outbox_id, 'LEDGER_WITHOUT_REGISTRY'
      FROM (SELECT DISTINCT x.outbox_id FROM symphony.payment_outbox_attempts x
             WHERE %(since)s::timestamptz IS NULL
                OR x.outbox_id = ANY (%(scope_ids)s::uuid[])) a
     WHERE NOT EXISTS (SELECT 1 FROM symphony.payment_instruction_registry r
                        WHERE r.outbox_id = a.outbox_id)
    UNION ALL
    SELECT d.outbox_id, 'DECISION_WITHOUT_REGISTRY' FROM symphony.outbox_review_decisions d
     WHERE NOT EXISTS (SELECT 1 FROM symphony.payment_instruction_registry r
                        WHERE r.outbox_id = d.outbox_id)
)
SELECT x.outbox_id, NULL::integer AS attempt_no, NULL::text AS subject, x.problem,
       count(*) OVER () AS total
  FROM problems x
 WHERE x.problem IS NOT NULL
 ORDER BY x.outbox_id
 LIMIT %(limit)s;

-- name: audit_sequences
-- I8, through the owner's functions (the auditor may not read sequence numbers): the full one,
-- or for an incremental audit the one that probes the items in scope (one branch runs).
SELECT v.outbox_id, NULL::integer AS attempt_no, v.participant_id AS subject, v.problem,
       v.total
  FROM symphony.audit_sequence_violations(NULL, %(limit)s) v
 WHERE %(since)s::timestamptz IS NULL
UNION ALL
SELECT v.outbox_id, NULL::integer, v.participant_id, v.problem, v.total
  FROM symphony.audit_sequence_violations_in(%(scope_ids)s::uuid[], %(limit)s) v
 WHERE %(since)s::timestamptz IS NOT NULL;

-- name: audit_lease_fencing
-- I9, through the owner's functions (no role may read a lease token): the full one, or for an
-- incremental audit the one that reads the items in scope (one branch runs).
SELECT v.outbox_id, v.attempt_no, NULL::text AS subject, v.problem, v.total
  FROM symphony.audit_lease_violations(NULL, %(limit)s) v
 WHERE %(since)s::timestamptz IS NULL
UNION ALL
SELECT v.outbox_id, v.attempt_no, NULL::text, v.problem, v.total
  FROM symphony.audit_lease_violations_in(%(scope_ids)s::uuid[], %(limit)s) v
 WHERE %(since)s::timestamptz IS NOT NULL;

-- name: audit_no_failed_after_ambiguous
-- I10: once an attempt of an item may have executed (a ZOMBIE_REQUEUE row, or the attempt
-- its lookup mark names), no FAILED row follows, except an operator's review decision of
-- FAILED, and no CANCELED row follows at all (a cancel only before anything could reach the
-- rail); and while the item is pending it keeps needs_lookup, so its next dispatch asks the
-- rail first.
WITH ambiguous AS (
    SELECT x.outbox_id, min(x.attempt_no) AS first_no
      FROM (SELECT a.outbox_id, a.attempt_no FROM symphony.payment_outbox_attempts a
             WHERE a.state = 'ZOMBIE_REQUEUE'
            UNION ALL
            SELECT m.outbox_id, m.attempt_no FROM symphony.outbox_lookup_marks m) x
     WHERE %(since)s::timestamptz IS NULL OR x.outbox_id = ANY (%(scope_ids)s::uuid[])
     GROUP BY x.outbox_id
),
problems AS (
    SELECT f.outbox_id, f.attempt_no, 'FAILED_AFTER_AMBIGUOUS_ATTEMPT' AS problem
      FROM ambiguous x
      JOIN symphony.payment_outbox_attempts f
        ON f.outbox_id = x.outbox_id AND f.attempt_no >= x.first_no AND f.state = 'FAILED'
      LEFT JOIN symphony.payment_outbox_attempts o
        ON o.outbox_id = f.outbox_id AND o.attempt_no = f.attempt_no - 1
     WHERE NOT (o.state = 'DISPATCHING' AND o.error_code = 'OPERATOR_REVIEW'
                AND EXISTS (SELECT 1 FROM symphony.outbox_review_decisions d
                             WHERE d.outbox_id = f.outbox_id AND d.decision = 'FAILED'))
    UNION ALL
    SELECT c.outbox_id, c.attempt_no, 'CANCELED_AFTER_AMBIGUOUS_ATTEMPT'
      FROM ambiguous x
      JOIN symphony.payment_outbox_attempts c
        ON c.outbox_id = x.outbox_id AND c.attempt_no >= x.first_no AND c.state = 'CANCELED'
    UNION ALL
    SELECT p.outbox_id, x.first_no, 'LOOKUP_FLAG_LOST'
      FROM ambiguous x
      JOIN symphony.payment_outbox_pending p ON p.outbox_id = x.outbox_id
     WHERE NOT p.needs_lookup
)
SELECT x.outbox_id, x.attempt_no, NULL::text AS subject, x.problem, count(*) OVER () AS total
  FROM problems x
 ORDER BY x.outbox_id, x.attempt_no
 LIMIT %(limit)s;

-- name: audit_review_rules
-- I10, review: an item under review needs a lookup and holds no lease; a terminal row that
-- an operator's review wrote (its DISPATCHING row is OPERATOR_REVIEW) has that decision in
-- outbox_review_decisions, by that operator; a DISPATCHED or FAILED decision has its row.
WITH problems AS (
    SELECT p.outbox_id, NULL::integer AS attempt_no,
           CASE WHEN NOT p.needs_lookup THEN 'REVIEW_WITHOUT_LOOKUP'
                WHEN p.claimed_by IS NOT NULL THEN 'REVIEW_WHILE_LEASED' END AS problem
      FROM symphony.payment_outbox_pending p
     WHERE p.review_reason IS NOT NULL
    UNION ALL
    SELECT t.outbox_id, t.attempt_no, 'REVIEW_ROW_WITHOUT_DECISION'
      FROM symphony.payment_outbox_attempts o
      JOIN symphony.payment_outbox_attempts t
        ON t.outbox_id = o.outbox_id AND t.attempt_no = o.attempt_no + 1
     WHERE o.state = 'DISPATCHING' AND o.error_code = 'OPERATOR_REVIEW'
       AND t.state IN ('DISPATCHED', 'FAILED')
       AND NOT EXISTS (SELECT 1 FROM symphony.outbox_review_decisions d
                        WHERE d.outbox_id = t.outbox_id AND d.decision = t.state::text
                          AND t.worker_id = 'review:' || d.decided_by)
    UNION ALL
    SELECT d.outbox_id, NULL::integer, 'DECISION_WITHOUT_LEDGER_ROW'
      FROM symphony.outbox_review_decisions d
     WHERE d.decision IN ('DISPATCHED', 'FAILED')
       AND NOT EXISTS (SELECT 1 FROM symphony.payment_outbox_attempts a
                        WHERE a.outbox_id = d.outbox_id AND a.state::text = d.decision)
)
SELECT x.outbox_id, x.attempt_no, NULL::text AS subject, x.problem, count(*) OVER () AS total
  FROM problems x
 WHERE x.problem IS NOT NULL
   AND (%(since)s::timestamptz IS NULL OR x.outbox_id = ANY (%(scope_ids)s::uuid[]))
 ORDER BY x.outbox_id, x.attempt_no
 LIMIT %(limit)s;

-- name: audit_events
-- E1: every change a participant is told of has exactly one event, and every event its cause:
-- one payment.created per registered item; one payment.dispatched / failed / canceled per
-- DISPATCHED / FAILED / CANCELED ledger row; one payment.under_review per time the item
-- entered review (each review decision closes one, an item under review now holds one open).
-- Each participant's events are numbered 1, 2, 3, ... without a gap (full audits).
-- An incremental audit counts only the items in scope (each one whole): its cost follows the
-- scope, not the ledger (the events through their participants' index).
WITH expected AS (
    SELECT r.participant_id, r.outbox_id, 'payment.created' AS event_type, 1::bigint AS n
      FROM symphony.payment_instruction_registry r
     WHERE %(since)s::timestamptz IS NULL OR r.outbox_id = ANY (%(scope_ids)s::uuid[])
    UNION ALL
    SELECT a.participant_id, a.outbox_id,
           CASE a.state::text WHEN 'DISPATCHED' THEN 'payment.dispatched'
                              WHEN 'FAILED' THEN 'payment.failed'
                              ELSE 'payment.canceled' END,
           count(*)
      FROM symphony.payment_outbox_attempts a
     WHERE a.state::text IN ('DISPATCHED', 'FAILED', 'CANCELED')
       AND (%(since)s::timestamptz IS NULL OR a.outbox_id = ANY (%(scope_ids)s::uuid[]))
     GROUP BY 1, 2, 3
    UNION ALL
    SELECT d.participant_id, d.outbox_id, 'payment.under_review', count(*)
      FROM symphony.outbox_review_decisions d
     WHERE %(since)s::timestamptz IS NULL OR d.outbox_id = ANY (%(scope_ids)s::uuid[])
     GROUP BY 1, 2
    UNION ALL
    SELECT p.participant_id, p.outbox_id, 'payment.under_review', 1
      FROM symphony.payment_outbox_pending p
     WHERE p.review_reason IS NOT NULL
       AND (%(since)s::timestamptz IS NULL OR p.outbox_id = ANY (%(scope_ids)s::uuid[]))
),
wanted AS (
    SELECT e.participant_id, e.outbox_id, e.event_type, sum(e.n) AS n
      FROM expected e
     GROUP BY 1, 2, 3
),
written AS (
    SELECT v.participant_id, v.outbox_id, v.event_type, count(*) AS n
      FROM symphony.payment_events v
     WHERE %(since)s::timestamptz IS NULL
        OR (v.participant_id = ANY (%(scope_participants)s::text[])
            AND v.outbox_id = ANY (%(scope_ids)s::uuid[]))
     GROUP BY 1, 2, 3
),
problems AS (
    SELECT coalesce(w.outbox_id, x.outbox_id) AS outbox_id,
           coalesce(w.event_type, x.event_type) AS subject,
           CASE WHEN x.n IS NULL THEN 'EVENT_MISSING'
                WHEN w.n IS NULL THEN 'EVENT_WITHOUT_CAUSE'
                WHEN x.n > w.n THEN 'DUPLICATE_EVENT'
                ELSE 'EVENT_MISSING' END AS problem
      FROM wanted w
      FULL JOIN written x
        ON x.participant_id = w.participant_id AND x.outbox_id = w.outbox_id
       AND x.event_type = w.event_type
     WHERE w.n IS DISTINCT FROM x.n
    UNION ALL
    SELECT g.outbox_id, g.participant_id || ' event ' || g.event_seq, 'EVENT_SEQUENCE_GAP'
      FROM (SELECT v.participant_id, v.outbox_id, v.event_seq,
                   lag(v.event_seq, 1, 0::bigint)
                       OVER (PARTITION BY v.participant_id ORDER BY v.event_seq) AS previous
              FROM symphony.payment_events v
             WHERE %(since)s::timestamptz IS NULL) g
     WHERE g.event_seq <> g.previous + 1
)
SELECT x.outbox_id, NULL::integer AS attempt_no, x.subject, x.problem, count(*) OVER () AS total
  FROM problems x
 WHERE %(since)s::timestamptz IS NULL OR x.outbox_id = ANY (%(scope_ids)s::uuid[])
       OR x.problem = 'EVENT_SEQUENCE_GAP'
 ORDER BY x.outbox_id, x.subject
 LIMIT %(limit)s;

-- name: audit_instruction_digests
-- Tamper evidence: each registry row's digest recomputed from its content (the serialization
-- of docs/audit.md: version tag, then `<characters>:<text>` per field, NULL as `-`, joined
-- by `|`). A changed amount, destination, key or rail shows here.
WITH recomputed AS (
    SELECT r.outbox_id, r.instruction_digest,
           sha256(convert_to(
               'symphony-instruction-v1'
               || '|' || char_length(r.outbox_id::text)::text || ':' || r.outbox_id::text
               || '|' || CASE WHEN r.participant_id IS NULL THEN '-'
                              ELSE char_length(r.participant_id)::text || ':'
                                   || r.participant_id END
               || '|' || CASE WHEN r.instruction_id IS NULL THEN '-'
                              ELSE char_length(r.instruction_id)::text || ':'
                                   || r.instruction_id END
               || '|' || CASE WHEN r.idempotency_key IS NULL THEN '-'
                              ELSE char_length(r.idempotency_key)::text || ':'
                                   || r.idempotency_key END
               || '|' || CASE WHEN r.rail_type IS NULL THEN '-'
                              ELSE char_length(r.rail_type)::text || ':' || r.rail_type END
               || '|' || CASE WHEN r.payload IS NULL THEN '-'
                              ELSE char_length(r.payload::text)::text || ':'
                                   || r.payload::text END
               || '|' || CASE WHEN r.created_at IS NULL THEN '-'
                              ELSE char_length((extract(epoch FROM r.created_at) * 1000000)
                                               ::bigint::text)::text || ':'
                                   || (extract(epoch FROM r.created_at) * 1000000)
                                      ::bigint::text END,
               'UTF8')) AS expected
      FROM symphony.payment_instruction_registry r
     WHERE %(since)s::timestamptz IS NULL OR r.outbox_id = ANY (%(scope_ids)s::uuid[])
)
SELECT x.outbox_id, NULL::integer AS attempt_no, NULL::text AS subject,
       CASE WHEN x.instruction_digest IS NULL THEN 'DIGEST_MISSING'
            ELSE 'INSTRUCTION_CHANGED' END AS problem,
       count(*) OVER () AS total
  FROM recomputed x
 WHERE x.instruction_digest IS DISTINCT FROM x.expected
 ORDER BY x.outbox_id
 LIMIT %(limit)s;

-- name: audit_ledger_chain
-- Tamper evidence: each ledger row's digest recomputed over its content and the stored
-- digest of the row before it (attempt 1: the instruction's digest). A changed row fails at
-- itself; a removed or inserted row fails at the row after it.
WITH linked AS (
    SELECT a.outbox_id, a.attempt_no, a.row_digest,
           CASE WHEN a.attempt_no = 1 THEN r.instruction_digest
                ELSE lag(a.row_digest) OVER (PARTITION BY a.outbox_id ORDER BY a.attempt_no)
           END AS previous_digest,
           'symphony-attempt-v1'
           || '|' || char_length(a.outbox_id::text)::text || ':' || a.outbox_id::text
           || '|' || char_length(a.attempt_no::text)::text || ':' || a.attempt_no::text
           || '|' || char_length(a.state::text)::text || ':' || a.state::text
           || '|' || CASE WHEN a.worker_id IS NULL THEN '-'
                          ELSE char_length(a.worker_id)::text || ':' || a.worker_id END
           || '|' || CASE WHEN a.error_code IS NULL THEN '-'
                          ELSE char_length(a.error_code)::text || ':' || a.error_code END
           || '|' || CASE WHEN a.error_detail IS NULL THEN '-'
                          ELSE char_length(a.error_detail)::text || ':' || a.error_detail END
           || '|' || CASE WHEN a.rail_transaction_id IS NULL THEN '-'
                          ELSE char_length(a.rail_transaction_id)::text || ':'
                               || a.rail_transaction_id END
           || '|' || char_length((extract(epoch FROM a.recorded_at) * 1000000)::bigint::text)::text
                  || ':' || (extract(epoch FROM a.recorded_at) * 1000000)::bigint::text
           || '|' || char_length(a.recorded_by)::text || ':' || a.recorded_by
           || '|' || CASE WHEN a.lease_digest IS NULL THEN '-'
                          ELSE '64:' || encode(a.lease_digest, 'hex') END AS canonical
      FROM symphony.payment_outbox_attempts a
      LEFT JOIN symphony.payment_instruction_registry r
        ON r.outbox_id = a.outbox_id AND a.attempt_no = 1
     WHERE %(since)s::timestamptz IS NULL OR a.outbox_id = ANY (%(scope_ids)s::uuid[])
)
SELECT x.outbox_id, x.attempt_no, NULL::text AS subject,
       CASE WHEN x.row_digest IS NULL THEN 'DIGEST_MISSING'
            ELSE 'CHAIN_BROKEN' END AS problem,
       count(*) OVER () AS total
  FROM linked x
 WHERE x.row_digest IS DISTINCT FROM
       sha256(coalesce(x.previous_digest, ''::bytea) || convert_to(x.canonical, 'UTF8'))
 ORDER BY x.outbox_id, x.attempt_no
 LIMIT %(limit)s;

-- name: audit_checkpoint_chain
-- Tamper evidence: checkpoints are numbered 1, 2, 3, ...; each one's digest recomputes from
-- its fields and the previous checkpoint's digest; what they cover only grows.
WITH ordered AS (
    SELECT c.*,
           lag(c.checkpoint_id) OVER w AS previous_id,
           lag(c.checkpoint_digest) OVER w AS previous_stored_digest,
           lag(c.up_to_attempt_id) OVER w AS previous_up_to,
           lag(c.row_count) OVER w AS previous_row_count
      FROM symphony.ledger_checkpoints c
    WINDOW w AS (ORDER BY c.checkpoint_id)
),
problems AS (
    SELECT o.checkpoint_id,
           CASE
               WHEN o.checkpoint_id <> coalesce(o.previous_id, 0) + 1 THEN 'CHECKPOINT_MISSING'
               WHEN o.previous_digest IS DISTINCT FROM o.previous_stored_digest
                   THEN 'CHECKPOINT_CHAIN_BROKEN'
               WHEN o.up_to_attempt_id < coalesce(o.previous_up_to, 0)
                    OR o.row_count < coalesce(o.previous_row_count, 0)
                   THEN 'CHECKPOINT_WENT_BACK'
               WHEN o.checkpoint_digest IS DISTINCT FROM sha256(
                        coalesce(o.previous_digest, ''::bytea) || convert_to(
                            'symphony-checkpoint-v1'
                            || '|' || char_length(o.checkpoint_id::text)::text || ':'
                                   || o.checkpoint_id::text
                            || '|' || char_length((extract(epoch FROM o.taken_at) * 1000000)
                                                  ::bigint::text)::text || ':'
                                   || (extract(epoch FROM o.taken_at) * 1000000)::bigint::text
                            || '|' || char_length(o.up_to_attempt_id::text)::text || ':'
                                   || o.up_to_attempt_id::text
                            || '|' || char_length(o.row_count::text)::text || ':'
                                   || o.row_count::text
                            || '|' || char_length(o.item_count::text)::text || ':'
                                   || o.item_count::text
                            || '|' || '64:' || encode(o.heads_digest, 'hex')
                            || '|' || char_length(o.taken_by)::text || ':' || o.taken_by,
                            'UTF8'))
                   THEN 'CHECKPOINT_CHANGED'
           END AS problem
      FROM ordered o
)
SELECT NULL::uuid AS outbox_id, NULL::integer AS attempt_no,
       'checkpoint ' || x.checkpoint_id::text AS subject, x.problem, count(*) OVER () AS total
  FROM problems x
 WHERE x.problem IS NOT NULL
 ORDER BY x.checkpoint_id
 LIMIT %(limit)s;

-- name: audit_checkpoint_heads
-- Tamper evidence: every chain head a checkpoint recorded is still in the ledger, unchanged
-- (ROW_CHANGED, ROW_REMOVED); no row the checkpoints cover appeared since (ROW_INSERTED: a
-- row numbered at or below a checkpoint's up_to_attempt_id beyond the head it recorded, or of
-- an item no checkpoint saw).
WITH heads AS (
    SELECT h.checkpoint_id, h.outbox_id, h.attempt_no, h.row_digest
      FROM symphony.ledger_checkpoint_heads h
     WHERE %(since)s::timestamptz IS NULL OR h.outbox_id = ANY (%(scope_ids)s::uuid[])
),
latest_head AS (
    SELECT DISTINCT ON (h.outbox_id) h.outbox_id, h.attempt_no, c.up_to_attempt_id
      FROM heads h
      JOIN symphony.ledger_checkpoints c ON c.checkpoint_id = h.checkpoint_id
     ORDER BY h.outbox_id, h.checkpoint_id DESC
),
covered AS (
    SELECT max(c.up_to_attempt_id) AS up_to FROM symphony.ledger_checkpoints c
),
problems AS (
    SELECT h.outbox_id, h.attempt_no,
           CASE WHEN a.outbox_id IS NULL THEN 'ROW_REMOVED'
                WHEN a.row_digest IS DISTINCT FROM h.row_digest THEN 'ROW_CHANGED' END AS problem
      FROM heads h
      LEFT JOIN symphony.payment_outbox_attempts a
        ON a.outbox_id = h.outbox_id AND a.attempt_no = h.attempt_no
    UNION ALL
    SELECT a.outbox_id, a.attempt_no, 'ROW_INSERTED'
      FROM latest_head l
      JOIN symphony.payment_outbox_attempts a
        ON a.outbox_id = l.outbox_id AND a.attempt_no > l.attempt_no
       AND a.attempt_id <= l.up_to_attempt_id
    UNION ALL
    SELECT a.outbox_id, a.attempt_no, 'ROW_INSERTED'
      FROM symphony.payment_outbox_attempts a
     CROSS JOIN covered v
     WHERE a.attempt_id <= v.up_to
       AND (%(since)s::timestamptz IS NULL OR a.outbox_id = ANY (%(scope_ids)s::uuid[]))
       AND NOT EXISTS (SELECT 1 FROM symphony.ledger_checkpoint_heads h
                        WHERE h.outbox_id = a.outbox_id)
)
SELECT x.outbox_id, x.attempt_no, NULL::text AS subject, x.problem, count(*) OVER () AS total
  FROM problems x
 WHERE x.problem IS NOT NULL
 ORDER BY x.outbox_id, x.attempt_no
 LIMIT %(limit)s;

-- name: audit_latest_checkpoint
-- Tamper evidence: the latest checkpoint recomputed from today's ledger: the rows it covers
-- (attempt_id <= up_to_attempt_id), their items, and the digest over their chain heads.
WITH latest AS (
    SELECT c.checkpoint_id, c.up_to_attempt_id, c.row_count, c.item_count, c.heads_digest
      FROM symphony.ledger_checkpoints c
     ORDER BY c.checkpoint_id DESC
     LIMIT 1
),
heads AS (
    SELECT DISTINCT ON (a.outbox_id) a.outbox_id, a.attempt_no, a.row_digest
      FROM symphony.payment_outbox_attempts a
     WHERE a.attempt_id <= (SELECT l.up_to_attempt_id FROM latest l)
     ORDER BY a.outbox_id, a.attempt_no DESC
),
recomputed AS (
    SELECT (SELECT count(*) FROM symphony.payment_outbox_attempts a
             WHERE a.attempt_id <= (SELECT l.up_to_attempt_id FROM latest l)) AS row_count,
           count(*) AS item_count,
           sha256(convert_to(coalesce(string_agg(
               h.outbox_id::text || ':' || h.attempt_no::text || ':'
                   || encode(h.row_digest, 'hex'),
               E'\n' ORDER BY h.outbox_id), ''), 'UTF8')) AS heads_digest
      FROM heads h
),
problems AS (
    SELECT l.checkpoint_id, 'ROW_COUNT_CHANGED' AS problem
      FROM latest l, recomputed r WHERE r.row_count <> l.row_count
    UNION ALL
    SELECT l.checkpoint_id, 'ITEM_COUNT_CHANGED'
      FROM latest l, recomputed r WHERE r.item_count <> l.item_count
    UNION ALL
    SELECT l.checkpoint_id, 'HEADS_CHANGED'
      FROM latest l, recomputed r WHERE r.heads_digest <> l.heads_digest
)
SELECT NULL::uuid AS outbox_id, NULL::integer AS attempt_no,
       'checkpoint ' || x.checkpoint_id::text AS subject, x.problem, count(*) OVER () AS total
  FROM problems x
 ORDER BY x.problem
 LIMIT %(limit)s;

-- name: take_ledger_checkpoint
-- Anchor every chain (role: control). Ledger inserts do not wait for it; it waits for the
-- ledger writers in flight when it starts (docs/audit.md).
SELECT checkpoint_id, taken_at, up_to_attempt_id, row_count, item_count, heads_digest,
       previous_digest, checkpoint_digest, taken_by, changed_items
  FROM symphony.take_ledger_checkpoint();

-- name: ledger_checkpoints
-- Every checkpoint, oldest first, for an auditor to keep outside the database (role: auditor).
SELECT checkpoint_id, taken_at, up_to_attempt_id, row_count, item_count, heads_digest,
       previous_digest, checkpoint_digest, taken_by
  FROM symphony.ledger_checkpoints
 ORDER BY checkpoint_id;

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

-- name: create_webhook_endpoint
-- Register a participant's endpoint with its first sealed secret (role: webhooks).
SELECT endpoint_id, url, event_types, description, status, created_at
  FROM symphony.create_webhook_endpoint(
      %(participant_id)s, %(endpoint_id)s, %(url)s, %(event_types)s::text[], %(description)s,
      %(secret_ciphertext)s, %(key_id)s);

-- name: participant_webhook_endpoints
-- A participant's live endpoints with their health, no secret (role: webhooks).
SELECT endpoint_id, url, event_types, description, status, consecutive_failures,
       failing_since, last_success_at, last_failure_at, last_error_class, live_secrets,
       created_at
  FROM symphony.participant_webhook_endpoints(%(participant_id)s);

-- name: delete_webhook_endpoint
SELECT endpoint_id, status, abandoned_deliveries
  FROM symphony.delete_webhook_endpoint(%(participant_id)s, %(endpoint_id)s);

-- name: rotate_webhook_endpoint_secret
SELECT endpoint_id, secret_no, previous_expires
  FROM symphony.rotate_webhook_endpoint_secret(
      %(participant_id)s, %(endpoint_id)s, %(secret_ciphertext)s, %(key_id)s,
      %(overlap_seconds)s);

-- name: ops_webhook_endpoints
-- Every endpoint (or those of one status, or the failing ones), failing first (roles:
-- webhooks, control).
SELECT participant_id, endpoint_id, url, event_types, status, status_reason,
       consecutive_failures, failing_since, last_success_at, last_failure_at, last_error_class,
       pending_deliveries, created_at, held_since, events_waiting
  FROM symphony.ops_webhook_endpoints(%(status)s, %(limit)s);

-- name: set_webhook_endpoint_enabled
SELECT participant_id, endpoint_id, status
  FROM symphony.set_webhook_endpoint_enabled(%(endpoint_id)s, %(enabled)s, %(reason)s);

-- name: ops_webhook_deliveries
SELECT delivery_id, participant_id, endpoint_id, event_id, event_seq, status, attempt_count,
       next_attempt_at, replay_of, created_at, finished_at, last_http_status, last_error_class,
       last_attempt_at
  FROM symphony.ops_webhook_deliveries(%(endpoint_id)s, %(limit)s);

-- name: replay_webhook_delivery_by_operator
-- Send a delivery's event again, recorded as the named operator's action (role: control).
SELECT action_id, result, delivery_id, replay_of, participant_id, endpoint_id, event_id,
       outbox_id, status, endpoint_status
  FROM symphony.replay_webhook_delivery_by_operator(%(delivery_id)s, %(requested_by)s,
                                                    %(reason)s);

-- name: webhook_health
-- Endpoint and delivery counts for the metrics and the dashboard (roles: delivery, webhooks,
-- control).
SELECT endpoints_enabled, endpoints_disabled, endpoints_failing, endpoints_held,
       deliveries_pending, deliveries_due, oldest_due_at, deliveries_failed, events_waiting,
       observed_at
  FROM symphony.webhook_health();

-- name: fan_out_webhook_events
-- New events become deliveries, per endpoint cursor (role: delivery).
SELECT endpoints, events, deliveries
  FROM symphony.fan_out_webhook_events(%(endpoint_limit)s, %(event_limit)s);

-- name: claim_webhook_deliveries
-- Lease due deliveries with what their calls need (role: delivery).
SELECT participant_id, delivery_id, endpoint_id, url, event_seq, event_id, event_type, outbox_id,
       event_created_at, payload, attempt_no, lease_token, lease_expires_at, secret_ciphertexts,
       secret_key_ids
  FROM symphony.claim_webhook_deliveries(%(worker_id)s, %(limit)s, %(lease_seconds)s);

-- name: complete_webhook_delivery
-- Record one attempt, fenced by its lease token (role: delivery).
SELECT status, attempt_no, next_attempt_at, endpoint_failing, endpoint_became_failing
  FROM symphony.complete_webhook_delivery(
      %(participant_id)s, %(delivery_id)s, %(lease_token)s, %(outcome)s,
      %(retry_after_seconds)s, %(http_status)s, %(latency_ms)s, %(error_class)s,
      %(response_excerpt)s, %(started_at)s, %(failing_after)s);

-- operators (docs: README "Operator API") -----------------------------------------------------

-- name: ops_browse_payments
-- The queue browse, newest first, by cursor (created_at, outbox_id) over the registry's
-- created_at index (roles: readonly, control). At most `window` registry rows are looked at
-- per call; the state and rail filters apply to those, so a rare state costs bounded calls,
-- never a pass over the registry. The last row (edge = true) is the window's oldest row and
-- how many rows it held: where the next call continues when the page is not full.
WITH w AS MATERIALIZED (
    SELECT r.outbox_id, r.participant_id, r.instruction_id, r.rail_type, r.payload,
           r.created_at
      FROM symphony.payment_instruction_registry r
     WHERE r.created_at <= %(after_at)s::timestamptz
       AND (r.created_at, r.outbox_id) < (%(after_at)s::timestamptz, %(after_id)s::uuid)
     ORDER BY r.created_at DESC, r.outbox_id DESC
     LIMIT %(window)s
),
hits AS (
    SELECT w.*, x.state, x.attempt_count, x.next_attempt_at, x.last_error_code, x.updated_at
      FROM w
      CROSS JOIN LATERAL (
          SELECT CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.state
                      WHEN p.review_since IS NOT NULL THEN 'REVIEW'
                      WHEN p.lease_expires_at IS NOT NULL THEN 'DISPATCHING'
                      WHEN p.outbox_id IS NOT NULL THEN 'PENDING'
                      ELSE 'PENDING' END AS state,
                 p.attempt_count, p.next_attempt_at,
                 coalesce(CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED')
                               THEN l.error_code END, p.last_error_code) AS last_error_code,
                 coalesce(l.recorded_at, w.created_at) AS updated_at
            FROM (SELECT 1) one
            LEFT JOIN LATERAL (
                SELECT a.state::text AS state, a.error_code, a.recorded_at
                  FROM symphony.payment_outbox_attempts a
                 WHERE a.outbox_id = w.outbox_id AND a.participant_id = w.participant_id
                 ORDER BY a.attempt_no DESC
                 LIMIT 1) l ON true
            LEFT JOIN symphony.payment_outbox_pending p
              ON p.outbox_id = w.outbox_id AND p.participant_id = w.participant_id
      ) x
     WHERE (%(state)s::text IS NULL OR x.state = %(state)s::text)
       AND (%(rail)s::text IS NULL OR w.rail_type = %(rail)s::text)
     ORDER BY w.created_at DESC, w.outbox_id DESC
     LIMIT %(limit)s
)
SELECT false AS edge, 0::bigint AS scanned, h.outbox_id, h.participant_id, h.instruction_id,
       h.rail_type, h.payload, h.created_at, h.state, h.attempt_count, h.next_attempt_at,
       h.last_error_code, h.updated_at
  FROM hits h
UNION ALL
SELECT true, (SELECT count(*) FROM w), e.outbox_id, e.participant_id, NULL, NULL, NULL,
       e.created_at, NULL, NULL, NULL, NULL, NULL
  FROM (SELECT w.outbox_id, w.participant_id, w.created_at FROM w
         ORDER BY w.created_at, w.outbox_id LIMIT 1) e;

-- name: ops_browse_participant_payments
-- ops_browse_payments for one participant, over the registry's (participant_id, created_at,
-- outbox_id) index.
WITH w AS MATERIALIZED (
    SELECT r.outbox_id, r.participant_id, r.instruction_id, r.rail_type, r.payload,
           r.created_at
      FROM symphony.payment_instruction_registry r
     WHERE r.participant_id = %(participant)s::text
       AND r.created_at <= %(after_at)s::timestamptz
       AND (r.created_at, r.outbox_id) < (%(after_at)s::timestamptz, %(after_id)s::uuid)
     -- participant_id leads the order as it leads the index (one value: the same order).
     ORDER BY r.participant_id DESC, r.created_at DESC, r.outbox_id DESC
     LIMIT %(window)s
),
hits AS (
    SELECT w.*, x.state, x.attempt_count, x.next_attempt_at, x.last_error_code, x.updated_at
      FROM w
      CROSS JOIN LATERAL (
          SELECT CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.state
                      WHEN p.review_since IS NOT NULL THEN 'REVIEW'
                      WHEN p.lease_expires_at IS NOT NULL THEN 'DISPATCHING'
                      ELSE 'PENDING' END AS state,
                 p.attempt_count, p.next_attempt_at,
                 coalesce(CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED')
                               THEN l.error_code END, p.last_error_code) AS last_error_code,
                 coalesce(l.recorded_at, w.created_at) AS updated_at
            FROM (SELECT 1) one
            LEFT JOIN LATERAL (
                SELECT a.state::text AS state, a.error_code, a.recorded_at
                  FROM symphony.payment_outbox_attempts a
                 WHERE a.outbox_id = w.outbox_id AND a.participant_id = w.participant_id
                 ORDER BY a.attempt_no DESC
                 LIMIT 1) l ON true
            LEFT JOIN symphony.payment_outbox_pending p
              ON p.outbox_id = w.outbox_id AND p.participant_id = w.participant_id
      ) x
     WHERE (%(state)s::text IS NULL OR x.state = %(state)s::text)
       AND (%(rail)s::text IS NULL OR w.rail_type = %(rail)s::text)
     ORDER BY w.created_at DESC, w.outbox_id DESC
     LIMIT %(limit)s
)
SELECT false AS edge, 0::bigint AS scanned, h.outbox_id, h.participant_id, h.instruction_id,
       h.rail_type, h.payload, h.created_at, h.state, h.attempt_count, h.next_attempt_at,
       h.last_error_code, h.updated_at
  FROM hits h
UNION ALL
SELECT true, (SELECT count(*) FROM w), e.outbox_id, e.participant_id, NULL, NULL, NULL,
       e.created_at, NULL, NULL, NULL, NULL, NULL
  FROM (SELECT w.outbox_id, w.participant_id, w.created_at FROM w
         ORDER BY w.created_at, w.outbox_id LIMIT 1) e;

-- name: ops_browse_review
-- The review queue, oldest first, by cursor (review_since, outbox_id) over the review index
-- (roles: readonly, control): items that may have executed and wait for an operator.
SELECT p.outbox_id, p.participant_id, r.instruction_id, r.rail_type, r.payload, r.created_at,
       'REVIEW'::text AS state, p.attempt_count, p.next_attempt_at, p.last_error_code,
       p.review_since AS updated_at, p.review_reason, p.review_since
  FROM symphony.payment_outbox_pending p
  JOIN symphony.payment_instruction_registry r
    ON r.outbox_id = p.outbox_id AND r.participant_id = p.participant_id
 WHERE p.review_reason IS NOT NULL
   AND (p.review_since, p.outbox_id) > (%(after_at)s::timestamptz, %(after_id)s::uuid)
   AND (%(participant)s::text IS NULL OR p.participant_id = %(participant)s::text)
   AND (%(rail)s::text IS NULL OR r.rail_type = %(rail)s::text)
 ORDER BY p.review_since, p.outbox_id
 LIMIT %(limit)s;

-- name: ops_item_actions
-- An item's operator history, oldest first (roles: readonly, control).
SELECT action_id, action, actor_token_id, actor_label, reason, outcome, recorded_at,
       recorded_by
  FROM symphony.ops_item_actions(%(outbox_id)s);

-- name: ops_participant_actions
-- The newest operator actions about one participant (roles: readonly, control).
SELECT a.action_id, a.action, a.outbox_id, a.target, a.actor_token_id, a.actor_label,
       a.reason, a.outcome, a.recorded_at, a.recorded_by
  FROM symphony_ops.operator_actions a
 WHERE a.participant_id = %(participant_id)s
 ORDER BY a.action_id DESC
 LIMIT %(limit)s;

-- name: ops_api_tokens
-- Every token without its secret material, newest first (roles: readonly, control).
SELECT token_id, kind, scope, participant_id, label, created_at, revoked_at
  FROM symphony.ops_api_tokens(%(limit)s);

-- name: ops_resolve_review
-- An operator token resolves an item under review (role: operator).
SELECT action_id, outbox_id, decision, state, attempt_no
  FROM symphony.ops_resolve_review(%(token_id)s, %(secret_hash)s, %(outbox_id)s,
                                   %(decision)s, %(reason)s, %(rail_transaction_id)s);

-- name: ops_revoke_participant
-- An operator token revokes a participant and its tokens (role: operator).
SELECT action_id, participant_id, status, revoked_at
  FROM symphony.ops_revoke_participant(%(token_id)s, %(secret_hash)s, %(participant_id)s,
                                       %(reason)s);

-- name: ops_revoke_token
-- An operator token revokes a token (role: operator).
SELECT action_id, token_id, revoked_at
  FROM symphony.ops_revoke_token(%(token_id)s, %(secret_hash)s, %(target_token_id)s,
                                 %(reason)s);

-- name: ops_replay_webhook_delivery
-- An operator token sends a webhook delivery's event again (role: operator).
SELECT action_id, result, delivery_id, replay_of, participant_id, endpoint_id, event_id,
       outbox_id, status, endpoint_status
  FROM symphony.ops_replay_webhook_delivery(%(token_id)s, %(secret_hash)s, %(delivery_id)s,
                                            %(reason)s);

-- name: ops_participant_summary
-- One participant's live counts, oldest pending item and recent outcomes (roles: readonly,
-- control).
SELECT participant_id, display_name, status, bucket, due, scheduled, dispatching, zombies,
       under_review, pending_total, oldest_pending_at, dispatched_last_hour, failed_last_hour,
       dispatched_last_day, failed_last_day, observed_at
  FROM symphony.ops_participant_summary(%(participant_id)s);

-- the fleet -------------------------------------------------------------------------------------

-- name: record_worker_heartbeat
-- One heartbeat of a worker: one upsert per heartbeat interval (role: executor).
SELECT symphony.record_worker_heartbeat(
    %(worker_id)s, %(bucket_from)s, %(bucket_to)s, %(version)s, %(started_at)s,
    %(last_cycle_at)s, %(in_flight)s, %(stale_after_seconds)s) AS heartbeat_at;

-- name: end_worker_heartbeat
-- A worker that stops cleanly leaves the fleet (role: executor).
SELECT symphony.end_worker_heartbeat(%(worker_id)s) AS ended;

-- name: fleet_workers
-- Every worker that sent a heartbeat in the last day, live ones first (roles: readonly,
-- auditor, control). Stale: no heartbeat within its own stale_after_seconds.
SELECT h.worker_id, h.bucket_from, h.bucket_to, h.version, h.started_at, h.last_cycle_at,
       h.in_flight, h.heartbeat_at, h.stale_after_seconds,
       h.heartbeat_at + make_interval(secs => h.stale_after_seconds) < now() AS stale,
       extract(epoch FROM now() - h.heartbeat_at)::double precision AS heartbeat_age_seconds,
       now() AS observed_at
  FROM symphony_ops.worker_heartbeats h
 ORDER BY h.heartbeat_at + make_interval(secs => h.stale_after_seconds) < now(),
          h.bucket_from, h.worker_id;

-- name: fleet_uncovered_buckets
-- The routing buckets (0-255) that no live worker covers, as ranges (roles: readonly,
-- auditor, control). Empty while one live worker covers everything.
WITH uncovered AS (
    SELECT b.bucket
      FROM generate_series(0, 255) AS b(bucket)
     WHERE NOT EXISTS (
         SELECT 1 FROM symphony_ops.worker_heartbeats h
          WHERE h.heartbeat_at + make_interval(secs => h.stale_after_seconds) >= now()
            AND b.bucket BETWEEN h.bucket_from AND h.bucket_to)
)
SELECT min(u.bucket) AS bucket_from, max(u.bucket) AS bucket_to
  FROM (SELECT x.bucket, x.bucket - row_number() OVER (ORDER BY x.bucket) AS grp
          FROM uncovered x) u
 GROUP BY u.grp
 ORDER BY 1;

-- cancellation (migration cancellation) ---------------------------------------------------------

-- name: cancel_payment
-- A participant cancels one of its own payments (role: ingest).
SELECT outbox_id, result, state, refusal, attempt_no, canceled_at
  FROM symphony.cancel_payment(%(participant_id)s, %(outbox_id)s, %(reason)s);

-- name: cancel_payment_by_operator
-- An operator cancels a payment from the command line (role: control).
SELECT outbox_id, participant_id, result, state, refusal, attempt_no, canceled_at
  FROM symphony.cancel_payment_by_operator(%(outbox_id)s, %(canceled_by)s, %(reason)s);

-- name: ops_cancel_payment
-- An operator token cancels a payment (role: operator).
SELECT action_id, outbox_id, participant_id, result, state, refusal, attempt_no, canceled_at
  FROM symphony.ops_cancel_payment(%(token_id)s, %(secret_hash)s, %(outbox_id)s, %(reason)s);
