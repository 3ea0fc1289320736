-- 0006 — money-safety fixes from review.
--
-- Default privileges. `ALTER DEFAULT PRIVILEGES ... IN SCHEMA ... REVOKE` (0001) can only take
-- away what an earlier schema-level GRANT added; it cannot remove PostgreSQL's built-in
-- default (EXECUTE on functions and USAGE on types for PUBLIC), so pg_default_acl stayed empty
-- and every function a later migration creates would be executable by every runtime role.
-- The global form (no IN SCHEMA) records a default for the owner that does remove them: a new
-- function or type is usable only by the roles a migration grants it to.

ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner REVOKE USAGE ON TYPES FROM PUBLIC;

-- The HTTP API's own login: it writes as symphony_ingest and reads as symphony_readonly, and
-- may become nothing else (no executor, no control), so a compromised API can neither claim
-- nor complete an item. Created like the principals of 0001: guarded, attributes re-asserted.
DO $api$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'symphony_api_svc') THEN
        CREATE ROLE symphony_api_svc;
    END IF;
    ALTER ROLE symphony_api_svc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
        NOREPLICATION NOBYPASSRLS;
END
$api$;
GRANT symphony_ingest   TO symphony_api_svc WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;
GRANT symphony_readonly TO symphony_api_svc WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;

-- A service that runs with only its own principal's DSN must still be able to tell whether
-- the schema matches its code (readiness, "run symphony migrate"). The migration record is
-- not secret; reading it is all the runtime roles get in symphony_meta.
GRANT USAGE ON SCHEMA symphony_meta
    TO symphony_control, symphony_ingest, symphony_executor, symphony_readonly, symphony_auditor;
GRANT SELECT ON symphony_meta.schema_migrations
    TO symphony_control, symphony_ingest, symphony_executor, symphony_readonly, symphony_auditor;

-- pg_notify is executable by PUBLIC, so any login could wake every worker on the outbox's
-- channel at will. Only the owner's functions (the pending-insert trigger and the repair)
-- notify. PostgreSQL has no privilege on the NOTIFY command itself; a spurious wake-up costs
-- one empty claim, never a wrong state. (Nor can a login be kept from changing its own
-- password with ALTER ROLE: PostgreSQL allows every role that.)
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_notify(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.pg_notify(text, text) TO symphony_owner;

SET LOCAL ROLE symphony_owner;

-- Trigger functions as the owner. Before PostgreSQL 18 a deferred constraint trigger runs as
-- the role current at COMMIT (symphony_ingest, symphony_executor), which may read none of
-- the outbox tables, so the commit-time I7 check failed for every enqueue and completion.
-- Each trigger function that reads or writes outbox tables now runs as the owner whoever
-- fires it, with the search_path pinned since 0003. (The server version gate is raised to 18,
-- the version the test suite runs on.)
ALTER FUNCTION symphony.refuse_history_rewrite() SECURITY DEFINER;
ALTER FUNCTION symphony.check_attempt_sequence() SECURITY DEFINER;
ALTER FUNCTION symphony.check_pending_monotonic() SECURITY DEFINER;
ALTER FUNCTION symphony.check_pending_matches_ledger() SECURITY DEFINER;
ALTER FUNCTION symphony.refuse_pending_truncate() SECURITY DEFINER;
ALTER FUNCTION symphony.check_sequence_forward() SECURITY DEFINER;
ALTER FUNCTION symphony.notify_pending_work() SECURITY DEFINER;

-- Policy: how long after an ambiguous outcome the rail is first asked (a lookup a second
-- after a timeout proves little: the call may still be queued at the rail), and the zombie
-- threshold the leases are bound to (a claim may not take a lease longer than the threshold
-- the repair works with). `symphony migrate` writes the threshold from
-- ZOMBIE_THRESHOLD_SECONDS.
ALTER TABLE symphony.outbox_retry_policy
    ADD COLUMN ambiguous_settle_ms integer NOT NULL DEFAULT 30000,
    ADD COLUMN zombie_threshold_seconds integer NOT NULL DEFAULT 120,
    ADD CONSTRAINT outbox_retry_policy_ambiguous_settle
        CHECK (ambiguous_settle_ms BETWEEN 0 AND 86400000),
    ADD CONSTRAINT outbox_retry_policy_zombie_threshold
        CHECK (zombie_threshold_seconds BETWEEN 1 AND 86400);

-- Review: an item that may have been executed and that the rail will not settle (no lookup,
-- lookups that keep answering "unknown", declines after an ambiguous attempt) must end
-- somewhere visible instead of retrying silently for ever. Once its attempts reach the retry
-- ceiling it stays pending (I7: not terminal) but is no longer claimed: review_reason says
-- why, until an operator records the rail's confirmed outcome (resolve_outbox_review below).
ALTER TABLE symphony.payment_outbox_pending
    ADD COLUMN review_reason text,
    ADD COLUMN review_since timestamptz,
    ADD CONSTRAINT payment_outbox_pending_review_shape CHECK (
        (review_reason IS NULL AND review_since IS NULL)
        OR (review_reason IS NOT NULL AND review_since IS NOT NULL AND lease_token IS NULL
            AND needs_lookup)
    );

-- The due index leaves items under review out, so claiming never walks past them.
DROP INDEX symphony.payment_outbox_pending_due_idx;
CREATE INDEX payment_outbox_pending_due_idx
    ON symphony.payment_outbox_pending (next_attempt_at)
    WHERE lease_token IS NULL AND review_reason IS NULL;

CREATE INDEX payment_outbox_pending_review_idx
    ON symphony.payment_outbox_pending (review_since)
    WHERE review_reason IS NOT NULL;

-- Every operator decision on an item under review, whatever it was: who decided, on what
-- evidence, through which login. Append-only like the ledger.
CREATE TABLE symphony.outbox_review_decisions (
    decision_id         bigint GENERATED ALWAYS AS IDENTITY,
    outbox_id           uuid        NOT NULL,
    decision            text        NOT NULL,
    decided_by          text        NOT NULL,
    reason              text        NOT NULL,
    rail_transaction_id text,
    review_reason       text        NOT NULL,
    decided_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    recorded_by         text        NOT NULL DEFAULT session_user,
    CONSTRAINT outbox_review_decisions_pkey PRIMARY KEY (decision_id),
    CONSTRAINT outbox_review_decisions_outbox_id_fkey
        FOREIGN KEY (outbox_id) REFERENCES symphony.payment_instruction_registry (outbox_id),
    CONSTRAINT outbox_review_decisions_decision
        CHECK (decision IN ('DISPATCHED', 'FAILED', 'RETRY'))
);

CREATE INDEX outbox_review_decisions_outbox_idx
    ON symphony.outbox_review_decisions (outbox_id);

CREATE TRIGGER outbox_review_decisions_append_only
    BEFORE UPDATE OR DELETE ON symphony.outbox_review_decisions
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();
CREATE TRIGGER outbox_review_decisions_no_truncate
    BEFORE TRUNCATE ON symphony.outbox_review_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();
ALTER TABLE symphony.outbox_review_decisions
    ENABLE ALWAYS TRIGGER outbox_review_decisions_append_only,
    ENABLE ALWAYS TRIGGER outbox_review_decisions_no_truncate;

-- claim: the lease clock starts at clock_timestamp(), not at the transaction's start
-- (now()), so a lease is never shorter than the worker believes; and a lease may not
-- outlast the zombie threshold the repair uses.
CREATE OR REPLACE FUNCTION symphony.claim_outbox_batch(
    p_worker_id     text,
    p_batch_size    integer,
    p_lease_seconds integer
) RETURNS TABLE (
    outbox_id        uuid,
    lease_token      uuid,
    lease_expires_at timestamptz,
    attempt_no       integer,
    attempt_count    integer,
    needs_lookup     boolean,
    participant_id   text,
    sequence_id      bigint,
    instruction_id   text,
    rail_type        text,
    payload          jsonb
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_threshold integer;
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'claim_worker_id';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'batch size must be between 1 and 10000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'claim_batch_size';
    END IF;
    SELECT pol.zombie_threshold_seconds INTO v_threshold
      FROM outbox_retry_policy pol WHERE pol.singleton;
    IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND v_threshold THEN
        RAISE EXCEPTION 'lease must be between 1 second and the zombie threshold (% s)',
                        v_threshold
            USING ERRCODE = 'SY022', CONSTRAINT = 'claim_lease_seconds';
    END IF;

    RETURN QUERY
    WITH due AS (
        SELECT p.outbox_id
          FROM payment_outbox_pending p
         WHERE p.lease_token IS NULL
           AND p.review_reason IS NULL
           AND p.next_attempt_at <= now()
         ORDER BY p.next_attempt_at
         LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ),
    leased AS (
        UPDATE payment_outbox_pending p
           SET claimed_by       = p_worker_id,
               lease_token      = gen_random_uuid(),
               claimed_at       = clock_timestamp(),
               lease_expires_at = clock_timestamp() + make_interval(secs => p_lease_seconds),
               attempt_count    = p.attempt_count + 1,
               last_attempt_no  = p.last_attempt_no + 1
          FROM due
         WHERE p.outbox_id = due.outbox_id
           -- Spelled out so the update probes the primary key for the few claimed rows
           -- instead of hash-joining against the whole queue.
           AND p.outbox_id = ANY (ARRAY(SELECT d.outbox_id FROM due d))
        RETURNING p.outbox_id, p.lease_token, p.lease_expires_at, p.last_attempt_no,
                  p.attempt_count, p.needs_lookup
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts (outbox_id, attempt_no, state, worker_id, lease_token)
        SELECT l.outbox_id, l.last_attempt_no, 'DISPATCHING', p_worker_id, l.lease_token
          FROM leased l
        RETURNING 1
    )
    SELECT l.outbox_id, l.lease_token, l.lease_expires_at, l.last_attempt_no, l.attempt_count,
           l.needs_lookup, r.participant_id, r.sequence_id, r.instruction_id, r.rail_type,
           r.payload
      FROM leased l
      JOIN payment_instruction_registry r ON r.outbox_id = l.outbox_id
     ORDER BY r.participant_id, r.sequence_id;
END
$$;

-- complete: once an attempt of an item may have executed (needs_lookup), nothing but the
-- rail's confirmation (DISPATCHED) or an operator's review may end it. A clean refusal of a
-- later attempt proves nothing about the earlier call, which may still land: a requested
-- FAILED becomes a retry that the next attempt settles by lookup, and after an ambiguous
-- outcome the next attempt waits at least the settle time. An unsettled item that reaches
-- the retry ceiling goes to review instead of retrying for ever.
CREATE OR REPLACE FUNCTION symphony.complete_outbox_batch(
    p_outbox_ids           uuid[],
    p_lease_tokens         uuid[],
    p_outcomes             text[],
    p_error_codes          text[],
    p_error_details        text[],
    p_ambiguous            boolean[],
    p_rail_transaction_ids text[]
) RETURNS TABLE (
    outbox_id       uuid,
    result          text,
    state           text,
    attempt_no      integer,
    next_attempt_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_n integer := coalesce(cardinality(p_outbox_ids), 0);
BEGIN
    IF v_n = 0 OR v_n > 10000 THEN
        RAISE EXCEPTION 'a completion batch holds between 1 and 10000 items'
            USING ERRCODE = 'SY021', CONSTRAINT = 'complete_batch_size';
    END IF;
    IF coalesce(cardinality(p_lease_tokens), 0) <> v_n
       OR coalesce(cardinality(p_outcomes), 0) <> v_n
       OR coalesce(cardinality(p_error_codes), 0) <> v_n
       OR coalesce(cardinality(p_error_details), 0) <> v_n
       OR coalesce(cardinality(p_ambiguous), 0) <> v_n
       OR coalesce(cardinality(p_rail_transaction_ids), 0) <> v_n THEN
        RAISE EXCEPTION 'every completion argument must have one element per item'
            USING ERRCODE = 'SY023', CONSTRAINT = 'complete_batch_shape';
    END IF;
    IF EXISTS (
        SELECT 1 FROM unnest(p_outbox_ids, p_lease_tokens, p_outcomes, p_ambiguous)
                     AS i(outbox_id, lease_token, outcome, ambiguous)
         WHERE i.outbox_id IS NULL OR i.lease_token IS NULL OR i.ambiguous IS NULL
            OR i.outcome IS NULL OR i.outcome NOT IN ('DISPATCHED', 'RETRYABLE', 'FAILED')
            -- An outcome that may have executed is a retry (with a lookup), never a failure.
            OR (i.outcome = 'FAILED' AND i.ambiguous)
    ) THEN
        RAISE EXCEPTION 'each completion needs an outbox_id, a lease token and an outcome of '
                        'DISPATCHED, RETRYABLE or FAILED (an ambiguous outcome is RETRYABLE)'
            USING ERRCODE = 'SY024', CONSTRAINT = 'complete_outcome';
    END IF;
    IF (SELECT count(DISTINCT x) FROM unnest(p_outbox_ids) AS x) <> v_n THEN
        RAISE EXCEPTION 'an item may be completed once per batch'
            USING ERRCODE = 'SY025', CONSTRAINT = 'complete_batch_duplicate';
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT i.*
          FROM unnest(p_outbox_ids, p_lease_tokens, p_outcomes, p_error_codes,
                      p_error_details, p_ambiguous, p_rail_transaction_ids)
               AS i(outbox_id, lease_token, outcome, error_code, error_detail, ambiguous, rail_tx)
    ),
    policy AS (
        SELECT * FROM outbox_retry_policy WHERE singleton
    ),
    -- I9: only the holder of the current lease may complete. A row whose token changed since
    -- (repaired, reclaimed) is not matched here and is answered FENCED below.
    held AS (
        SELECT p.outbox_id, p.attempt_count, p.last_attempt_no, p.claimed_by, p.lease_token,
               p.needs_lookup
          FROM payment_outbox_pending p
          JOIN input i ON i.outbox_id = p.outbox_id AND i.lease_token = p.lease_token
         WHERE p.outbox_id = ANY (p_outbox_ids)
           FOR UPDATE OF p
    ),
    -- What the request means, before the ceiling: `unsettled` items may have been executed
    -- by some attempt (this one or an earlier one), so only DISPATCHED may end them.
    judged AS (
        SELECT h.*, i.outcome, i.error_code, i.error_detail, i.ambiguous, i.rail_tx,
               (h.needs_lookup OR i.ambiguous) AS unsettled,
               (i.outcome = 'FAILED' AND h.needs_lookup) AS held_open,
               (i.outcome <> 'DISPATCHED' AND h.attempt_count >= pol.max_attempts) AS at_ceiling
          FROM held h
          JOIN input i ON i.outbox_id = h.outbox_id
          CROSS JOIN policy pol
    ),
    decided AS (
        SELECT j.outbox_id, j.claimed_by, j.lease_token, j.last_attempt_no + 1 AS attempt_no,
               j.unsettled, j.rail_tx,
               CASE
                   WHEN j.outcome = 'DISPATCHED' THEN 'DISPATCHED'
                   WHEN j.outcome = 'FAILED' AND NOT j.held_open THEN 'FAILED'
                   -- The retry ceiling fails only items the rail certainly never executed.
                   WHEN j.at_ceiling AND NOT j.unsettled THEN 'FAILED'
                   ELSE 'RETRYABLE'
               END::attempt_state AS state,
               CASE
                   WHEN j.outcome = 'RETRYABLE' AND j.at_ceiling AND NOT j.unsettled
                       THEN 'RETRY_LIMIT_EXCEEDED'
                   ELSE left(j.error_code, 64)
               END AS error_code,
               CASE
                   WHEN j.outcome = 'RETRYABLE' AND j.at_ceiling AND NOT j.unsettled
                       THEN left(format('gave up after %s attempts; last error %s: %s',
                                        j.attempt_count, coalesce(j.error_code, '-'),
                                        coalesce(j.error_detail, '-')), 1000)
                   WHEN j.held_open
                       THEN left(format('held open, not failed: an earlier attempt may have '
                                        'executed; the rail answered %s: %s',
                                        coalesce(j.error_code, '-'),
                                        coalesce(j.error_detail, '-')), 1000)
                   ELSE left(j.error_detail, 1000)
               END AS error_detail,
               -- An unsettled item at the ceiling is not retried again: an operator decides.
               CASE
                   WHEN j.outcome <> 'DISPATCHED' AND j.at_ceiling AND j.unsettled
                        AND NOT (j.outcome = 'FAILED' AND NOT j.held_open)
                       THEN 'UNSETTLED_AT_RETRY_LIMIT'
               END AS review_reason,
               -- Exponential backoff with jitter, capped: attempt n waits base * 2^(n-1);
               -- an unsettled item waits at least the settle time before its lookup.
               greatest(
                   clock_timestamp() + make_interval(secs =>
                       least(pol.backoff_max_ms::numeric,
                             pol.backoff_base_ms
                                 * power(2::numeric, least(j.attempt_count - 1, 30)))
                       * (1 - pol.jitter_ratio * random()::numeric) / 1000.0),
                   CASE WHEN j.unsettled
                        THEN clock_timestamp()
                             + make_interval(secs => pol.ambiguous_settle_ms / 1000.0)
                   END) AS retry_at
          FROM judged j
          CROSS JOIN policy pol
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail,
             rail_transaction_id)
        SELECT d.outbox_id, d.attempt_no, d.state, d.claimed_by, d.lease_token, d.error_code,
               d.error_detail, left(d.rail_tx, 200)
          FROM decided d
        RETURNING outbox_id
    ),
    finished AS (
        DELETE FROM payment_outbox_pending p
         USING decided d
         WHERE p.outbox_id = d.outbox_id AND d.state IN ('DISPATCHED', 'FAILED')
           AND p.outbox_id = ANY (p_outbox_ids)
        RETURNING p.outbox_id
    ),
    rescheduled AS (
        UPDATE payment_outbox_pending p
           SET claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL, claimed_at = NULL,
               last_attempt_no = d.attempt_no,
               next_attempt_at = CASE WHEN d.review_reason IS NULL THEN d.retry_at
                                      ELSE clock_timestamp() END,
               needs_lookup    = p.needs_lookup OR d.unsettled,
               last_error_code = d.error_code,
               review_reason   = d.review_reason,
               review_since    = CASE WHEN d.review_reason IS NOT NULL
                                      THEN clock_timestamp() END
          FROM decided d
         WHERE p.outbox_id = d.outbox_id AND d.state = 'RETRYABLE'
           AND p.outbox_id = ANY (p_outbox_ids)
        RETURNING p.outbox_id, p.next_attempt_at, p.review_reason
    )
    SELECT i.outbox_id,
           CASE WHEN d.outbox_id IS NULL THEN 'FENCED' ELSE 'COMPLETED' END,
           d.state::text,
           d.attempt_no,
           -- An item under review has no next attempt: an operator decides.
           CASE WHEN r.review_reason IS NULL THEN r.next_attempt_at END
      FROM input i
      LEFT JOIN decided d ON d.outbox_id = i.outbox_id
      LEFT JOIN rescheduled r ON r.outbox_id = i.outbox_id;
END
$$;

-- repair: a requeued zombie may have been sent by its dead worker, so its lookup waits the
-- settle time like any other ambiguous outcome.
CREATE OR REPLACE FUNCTION symphony.repair_expired_leases(
    p_limit             integer DEFAULT 1000,
    p_threshold_seconds integer DEFAULT NULL
) RETURNS TABLE (
    outbox_id        uuid,
    attempt_no       integer,
    attempt_count    integer,
    claimed_by       text,
    lease_expires_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_repaired integer;
    v_settle   interval;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'repair limit must be between 1 and 100000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'repair_limit';
    END IF;
    IF p_threshold_seconds IS NOT NULL AND p_threshold_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'zombie threshold must be between 1 and 86400 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'repair_threshold';
    END IF;
    SELECT make_interval(secs => pol.ambiguous_settle_ms / 1000.0) INTO v_settle
      FROM outbox_retry_policy pol WHERE pol.singleton;

    RETURN QUERY
    WITH stale AS (
        SELECT p.outbox_id, p.claimed_by, p.lease_token, p.lease_expires_at
          FROM payment_outbox_pending p
         WHERE p.lease_token IS NOT NULL
           -- Only an expired lease is stale: a live lease is never taken from its holder,
           -- whatever threshold a repair process was started with.
           AND p.lease_expires_at <= now()
           AND (p_threshold_seconds IS NULL
                OR p.claimed_at <= now() - make_interval(secs => p_threshold_seconds))
         ORDER BY p.lease_expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ),
    requeued AS (
        UPDATE payment_outbox_pending p
           SET claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL, claimed_at = NULL,
               last_attempt_no = p.last_attempt_no + 1,
               next_attempt_at = clock_timestamp() + v_settle,
               needs_lookup    = true,
               last_error_code = 'ZOMBIE_REQUEUE'
          FROM stale s
         WHERE p.outbox_id = s.outbox_id
           AND p.outbox_id = ANY (ARRAY(SELECT x.outbox_id FROM stale x))
        RETURNING p.outbox_id, p.last_attempt_no, p.attempt_count
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail)
        SELECT q.outbox_id, q.last_attempt_no, 'ZOMBIE_REQUEUE', s.claimed_by, s.lease_token,
               'LEASE_EXPIRED',
               left(format('lease held by %s expired at %s', s.claimed_by, s.lease_expires_at),
                    1000)
          FROM requeued q
          JOIN stale s ON s.outbox_id = q.outbox_id
        RETURNING 1
    )
    SELECT q.outbox_id, q.last_attempt_no, q.attempt_count, s.claimed_by, s.lease_expires_at
      FROM requeued q
      JOIN stale s ON s.outbox_id = q.outbox_id
     ORDER BY s.lease_expires_at;

    GET DIAGNOSTICS v_repaired = ROW_COUNT;
    IF v_repaired > 0 THEN
        PERFORM pg_notify('symphony_outbox_pending', '');
    END IF;
END
$$;

-- resolve: an operator records the rail's confirmed outcome of an item under review.
-- DISPATCHED and FAILED end the item in the ledger through the grammar every item follows
-- (I5): a DISPATCHING row for the review, then the terminal row, both naming the operator
-- (worker_id 'review:<who>') and written by the control login (recorded_by). RETRY puts the
-- item back in the queue (it is still looked up first). Every decision is kept in
-- outbox_review_decisions.
CREATE FUNCTION symphony.resolve_outbox_review(
    p_outbox_id           uuid,
    p_decision            text,
    p_decided_by          text,
    p_reason              text,
    p_rail_transaction_id text DEFAULT NULL
) RETURNS TABLE (
    outbox_id  uuid,
    decision   text,
    state      text,
    attempt_no integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_item  payment_outbox_pending%ROWTYPE;
    v_token uuid := gen_random_uuid();
    v_who   text;
BEGIN
    IF p_decision IS NULL OR p_decision NOT IN ('DISPATCHED', 'FAILED', 'RETRY') THEN
        RAISE EXCEPTION 'a review decision is DISPATCHED, FAILED or RETRY'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_decision';
    END IF;
    IF p_decided_by IS NULL OR p_decided_by !~ '^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$' THEN
        RAISE EXCEPTION 'decided_by names the operator: 1-64 letters, digits, ".", "_", "@", '
                        '":" or "-"'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_decided_by';
    END IF;
    IF p_reason IS NULL OR char_length(btrim(p_reason)) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\x01-\x08\x0B\x0C\x0E-\x1F\x7F]' THEN
        RAISE EXCEPTION 'a review decision needs a reason of 1-500 printable characters'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_reason';
    END IF;
    IF p_decision = 'DISPATCHED' AND (p_rail_transaction_id IS NULL
       OR p_rail_transaction_id !~ '^[!-~]{1,200}$') THEN
        RAISE EXCEPTION 'DISPATCHED needs the rail''s transaction id (1-200 printable ASCII)'
            USING ERRCODE = 'SY041', CONSTRAINT = 'review_rail_transaction_id';
    END IF;

    SELECT * INTO v_item FROM payment_outbox_pending p
     WHERE p.outbox_id = p_outbox_id FOR UPDATE;
    IF NOT FOUND OR v_item.review_reason IS NULL THEN
        RAISE EXCEPTION 'the outbox item is not under review'
            USING ERRCODE = 'SY040', CONSTRAINT = 'review_not_under_review';
    END IF;

    INSERT INTO outbox_review_decisions
        (outbox_id, decision, decided_by, reason, rail_transaction_id, review_reason)
    VALUES (p_outbox_id, p_decision, p_decided_by, p_reason, p_rail_transaction_id,
            v_item.review_reason);

    IF p_decision = 'RETRY' THEN
        UPDATE payment_outbox_pending p
           SET review_reason = NULL, review_since = NULL, next_attempt_at = clock_timestamp()
         WHERE p.outbox_id = p_outbox_id;
        PERFORM pg_notify('symphony_outbox_pending', '');
        RETURN QUERY SELECT p_outbox_id, p_decision, 'PENDING'::text, v_item.last_attempt_no;
        RETURN;
    END IF;

    v_who := 'review:' || p_decided_by;
    INSERT INTO payment_outbox_attempts
        (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail)
    VALUES (p_outbox_id, v_item.last_attempt_no + 1, 'DISPATCHING', v_who, v_token,
            'OPERATOR_REVIEW', left('review of ' || v_item.review_reason, 1000));
    INSERT INTO payment_outbox_attempts
        (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail,
         rail_transaction_id)
    VALUES (p_outbox_id, v_item.last_attempt_no + 2, p_decision::attempt_state, v_who, v_token,
            CASE WHEN p_decision = 'FAILED' THEN 'OPERATOR_CONFIRMED_FAILED' END,
            left(format('resolved by %s: %s', p_decided_by, p_reason), 1000),
            p_rail_transaction_id);
    DELETE FROM payment_outbox_pending p WHERE p.outbox_id = p_outbox_id;
    RETURN QUERY SELECT p_outbox_id, p_decision, p_decision, v_item.last_attempt_no + 2;
END
$$;

-- The supervisor view counts items under review on their own (they are neither due nor
-- scheduled: nothing will happen to them until an operator decides).
CREATE OR REPLACE VIEW symphony.outbox_supervisor_status
WITH (security_barrier = true) AS
SELECT
    count(*) FILTER (WHERE p.lease_token IS NULL AND p.next_attempt_at <= now()
                       AND p.review_reason IS NULL)                               AS due,
    count(*) FILTER (WHERE p.lease_token IS NULL AND p.next_attempt_at > now()
                       AND p.review_reason IS NULL)                               AS scheduled,
    count(*) FILTER (WHERE p.lease_token IS NOT NULL AND p.lease_expires_at > now())
                                                                                  AS dispatching,
    count(*) FILTER (WHERE p.lease_token IS NOT NULL AND p.lease_expires_at <= now())
                                                                                  AS zombies,
    count(*) FILTER (WHERE p.needs_lookup AND p.review_reason IS NULL)            AS awaiting_lookup,
    count(*)                                                                      AS pending_total,
    min(p.created_at)                                                             AS oldest_pending_at,
    (SELECT count(*) FROM symphony.payment_outbox_attempts a WHERE a.state = 'DISPATCHED')
                                                                                  AS dispatched_total,
    (SELECT count(*) FROM symphony.payment_outbox_attempts a WHERE a.state = 'FAILED')
                                                                                  AS failed_total,
    now()                                                                         AS observed_at,
    count(*) FILTER (WHERE p.review_reason IS NOT NULL)                           AS under_review
FROM symphony.payment_outbox_pending p;

RESET ROLE;

REVOKE ALL ON symphony.outbox_review_decisions FROM PUBLIC;
REVOKE ALL ON FUNCTION symphony.resolve_outbox_review(uuid, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.resolve_outbox_review(uuid, text, text, text, text)
    TO symphony_control;
GRANT SELECT ON symphony.outbox_review_decisions
    TO symphony_control, symphony_readonly, symphony_auditor;
GRANT SELECT (review_reason, review_since) ON symphony.payment_outbox_pending
    TO symphony_readonly, symphony_auditor, symphony_control;
-- The worker checks at start that its lease fits the database's zombie threshold.
GRANT SELECT ON symphony.outbox_retry_policy TO symphony_executor;
GRANT UPDATE (ambiguous_settle_ms, zombie_threshold_seconds)
    ON symphony.outbox_retry_policy TO symphony_control;
