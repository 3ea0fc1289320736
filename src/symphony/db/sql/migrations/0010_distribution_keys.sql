-- 0010 — keys that carry the participant, and routing buckets: a schema a distributed
-- PostgreSQL (Citus) can shard by participant_id without a rewrite of the outbox.
--
-- Why:
-- * A table sharded by participant_id can enforce a primary key, a unique constraint, a
--   unique index or a foreign key only if the key contains participant_id (each shard checks
--   its own rows). Every table that holds per-item data therefore gets participant_id in each
--   of them: the registry, the pending queue, the ledger, the sequences (already keyed by it)
--   and the review decisions. outbox_id stays the leading column wherever it was, so every
--   existing lookup by outbox_id keeps its index and no function needs rewriting.
-- * Reference data stays small and is replicated whole: rails, the retry policy, currencies,
--   participants and API tokens. Tokens are looked up by token_id on every request before the
--   participant is known (operator tokens have none), so they are reference data too.
-- * The ledger and the review decisions gain participant_id (copied from the registry: no
--   row is lost or changed otherwise). The functions that append to them are unchanged: a
--   BEFORE INSERT trigger fills participant_id from the registry when the writer leaves it
--   out, and the foreign key (outbox_id, participant_id) proves it right.
-- * `bucket` is a fixed routing number (0-255) derived from participant_id, stored on the
--   pending row and on the participant: the top 8 bits of hashtext(participant_id), the hash
--   a distributed table on a text column is placed by, so a shard of a power-of-two shard
--   count up to 256 holds whole buckets. Workers split the buckets between them; the new
--   bucket overloads of claim, complete and repair touch one bucket range (one participant
--   set) per statement, while the old signatures keep working across all buckets.
-- * I6 keeps its partial unique indexes (per item, now (outbox_id, participant_id)), I2 its
--   primary key, I4 its unique (outbox_id, attempt_no, participant_id); the triggers and the
--   lease fencing are untouched. outbox_id alone is no longer declared unique across
--   participants (no sharded table can declare that): it is drawn by gen_random_uuid() in
--   enqueue, the only writer of the registry, and stays unique per participant by constraint.
-- The ledger and the review decisions are append-only for the owner too; their backfill
-- disables the append-only trigger for the one UPDATE that adds the column's values, inside
-- this migration's transaction, and re-enables it (ALWAYS) before anything else can run.

SET LOCAL ROLE symphony_owner;

-- The foreign keys on the registry's old unique key go first ---------------------------------

ALTER TABLE symphony.payment_outbox_pending
    DROP CONSTRAINT payment_outbox_pending_outbox_id_fkey;
ALTER TABLE symphony.payment_outbox_attempts
    DROP CONSTRAINT payment_outbox_attempts_outbox_id_fkey;
ALTER TABLE symphony.outbox_review_decisions
    DROP CONSTRAINT outbox_review_decisions_outbox_id_fkey;
ALTER TABLE symphony.outbox_lookup_marks
    DROP CONSTRAINT outbox_lookup_marks_outbox_id_fkey;

-- registry ------------------------------------------------------------------------------------

ALTER TABLE symphony.payment_instruction_registry
    DROP CONSTRAINT payment_instruction_registry_outbox_id_key;
ALTER TABLE symphony.payment_instruction_registry
    ADD CONSTRAINT payment_instruction_registry_outbox_id_key UNIQUE (outbox_id, participant_id);

-- pending -------------------------------------------------------------------------------------

ALTER TABLE symphony.payment_outbox_pending DROP CONSTRAINT payment_outbox_pending_pkey;
ALTER TABLE symphony.payment_outbox_pending
    ADD CONSTRAINT payment_outbox_pending_pkey PRIMARY KEY (outbox_id, participant_id);
ALTER TABLE symphony.payment_outbox_pending
    ADD CONSTRAINT payment_outbox_pending_outbox_id_fkey
        FOREIGN KEY (outbox_id, participant_id)
        REFERENCES symphony.payment_instruction_registry (outbox_id, participant_id);

-- ledger --------------------------------------------------------------------------------------

ALTER TABLE symphony.payment_outbox_attempts ADD COLUMN participant_id text;
ALTER TABLE symphony.payment_outbox_attempts DISABLE TRIGGER payment_outbox_attempts_append_only;
UPDATE symphony.payment_outbox_attempts a
   SET participant_id = r.participant_id
  FROM symphony.payment_instruction_registry r
 WHERE r.outbox_id = a.outbox_id;
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_append_only;
ALTER TABLE symphony.payment_outbox_attempts ALTER COLUMN participant_id SET NOT NULL;

ALTER TABLE symphony.payment_outbox_attempts DROP CONSTRAINT payment_outbox_attempts_pkey;
ALTER TABLE symphony.payment_outbox_attempts
    ADD CONSTRAINT payment_outbox_attempts_pkey PRIMARY KEY (attempt_id, participant_id);
ALTER TABLE symphony.payment_outbox_attempts
    DROP CONSTRAINT payment_outbox_attempts_outbox_attempt_no_key;
ALTER TABLE symphony.payment_outbox_attempts
    ADD CONSTRAINT payment_outbox_attempts_outbox_attempt_no_key
        UNIQUE (outbox_id, attempt_no, participant_id);
ALTER TABLE symphony.payment_outbox_attempts
    ADD CONSTRAINT payment_outbox_attempts_outbox_id_fkey
        FOREIGN KEY (outbox_id, participant_id)
        REFERENCES symphony.payment_instruction_registry (outbox_id, participant_id);

-- I6, per item as before (an item belongs to one participant), with the same names.
DROP INDEX symphony.payment_outbox_attempts_one_dispatched_idx;
CREATE UNIQUE INDEX payment_outbox_attempts_one_dispatched_idx
    ON symphony.payment_outbox_attempts (outbox_id, participant_id)
    WHERE state = 'DISPATCHED';
DROP INDEX symphony.payment_outbox_attempts_one_terminal_idx;
CREATE UNIQUE INDEX payment_outbox_attempts_one_terminal_idx
    ON symphony.payment_outbox_attempts (outbox_id, participant_id)
    WHERE state IN ('DISPATCHED', 'FAILED');

-- review decisions ----------------------------------------------------------------------------

ALTER TABLE symphony.outbox_review_decisions ADD COLUMN participant_id text;
ALTER TABLE symphony.outbox_review_decisions DISABLE TRIGGER outbox_review_decisions_append_only;
UPDATE symphony.outbox_review_decisions d
   SET participant_id = r.participant_id
  FROM symphony.payment_instruction_registry r
 WHERE r.outbox_id = d.outbox_id;
ALTER TABLE symphony.outbox_review_decisions
    ENABLE ALWAYS TRIGGER outbox_review_decisions_append_only;
ALTER TABLE symphony.outbox_review_decisions ALTER COLUMN participant_id SET NOT NULL;

ALTER TABLE symphony.outbox_review_decisions DROP CONSTRAINT outbox_review_decisions_pkey;
ALTER TABLE symphony.outbox_review_decisions
    ADD CONSTRAINT outbox_review_decisions_pkey PRIMARY KEY (decision_id, participant_id);
ALTER TABLE symphony.outbox_review_decisions
    ADD CONSTRAINT outbox_review_decisions_outbox_id_fkey
        FOREIGN KEY (outbox_id, participant_id)
        REFERENCES symphony.payment_instruction_registry (outbox_id, participant_id);

-- participant_id for writers that name only the item --------------------------------------------

-- Claim, complete, repair and the review append rows by outbox_id. The registry knows whose
-- item it is; the foreign key above refuses a participant_id that does not match it. Named
-- "00_" so it fires before every other BEFORE INSERT trigger of the table (they fire in name
-- order), whichever a later migration adds: each of them sees the row's participant.
CREATE FUNCTION symphony.fill_participant_from_registry() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    SELECT r.participant_id INTO NEW.participant_id
      FROM payment_instruction_registry r
     WHERE r.outbox_id = NEW.outbox_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER payment_outbox_attempts_00_fill_participant
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH ROW WHEN (NEW.participant_id IS NULL)
    EXECUTE FUNCTION symphony.fill_participant_from_registry();
CREATE TRIGGER outbox_review_decisions_00_fill_participant
    BEFORE INSERT ON symphony.outbox_review_decisions
    FOR EACH ROW WHEN (NEW.participant_id IS NULL)
    EXECUTE FUNCTION symphony.fill_participant_from_registry();
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_00_fill_participant;
ALTER TABLE symphony.outbox_review_decisions
    ENABLE ALWAYS TRIGGER outbox_review_decisions_00_fill_participant;

-- The audit's per-item tables (lookup marks, checkpoint heads) ------------------------------------

-- Per item like the ledger, so keyed and filled the same way; their backfill disables the
-- append-only trigger for the one UPDATE that adds the column, as above. ledger_checkpoints
-- (one row per checkpoint) is reference data: a checkpoint is taken over every shard at once.
ALTER TABLE symphony.outbox_lookup_marks ADD COLUMN participant_id text;
ALTER TABLE symphony.outbox_lookup_marks DISABLE TRIGGER outbox_lookup_marks_append_only;
UPDATE symphony.outbox_lookup_marks m
   SET participant_id = r.participant_id
  FROM symphony.payment_instruction_registry r
 WHERE r.outbox_id = m.outbox_id;
ALTER TABLE symphony.outbox_lookup_marks
    ENABLE ALWAYS TRIGGER outbox_lookup_marks_append_only;
ALTER TABLE symphony.outbox_lookup_marks ALTER COLUMN participant_id SET NOT NULL;
ALTER TABLE symphony.outbox_lookup_marks DROP CONSTRAINT outbox_lookup_marks_pkey;
ALTER TABLE symphony.outbox_lookup_marks
    ADD CONSTRAINT outbox_lookup_marks_pkey PRIMARY KEY (outbox_id, participant_id);
ALTER TABLE symphony.outbox_lookup_marks
    ADD CONSTRAINT outbox_lookup_marks_outbox_id_fkey
        FOREIGN KEY (outbox_id, participant_id)
        REFERENCES symphony.payment_instruction_registry (outbox_id, participant_id);
CREATE TRIGGER outbox_lookup_marks_00_fill_participant
    BEFORE INSERT ON symphony.outbox_lookup_marks
    FOR EACH ROW WHEN (NEW.participant_id IS NULL)
    EXECUTE FUNCTION symphony.fill_participant_from_registry();
ALTER TABLE symphony.outbox_lookup_marks
    ENABLE ALWAYS TRIGGER outbox_lookup_marks_00_fill_participant;

ALTER TABLE symphony.ledger_checkpoint_heads ADD COLUMN participant_id text;
ALTER TABLE symphony.ledger_checkpoint_heads DISABLE TRIGGER ledger_checkpoint_heads_append_only;
UPDATE symphony.ledger_checkpoint_heads h
   SET participant_id = r.participant_id
  FROM symphony.payment_instruction_registry r
 WHERE r.outbox_id = h.outbox_id;
ALTER TABLE symphony.ledger_checkpoint_heads
    ENABLE ALWAYS TRIGGER ledger_checkpoint_heads_append_only;
ALTER TABLE symphony.ledger_checkpoint_heads ALTER COLUMN participant_id SET NOT NULL;
ALTER TABLE symphony.ledger_checkpoint_heads DROP CONSTRAINT ledger_checkpoint_heads_pkey;
ALTER TABLE symphony.ledger_checkpoint_heads
    ADD CONSTRAINT ledger_checkpoint_heads_pkey
        PRIMARY KEY (checkpoint_id, outbox_id, participant_id);
CREATE TRIGGER ledger_checkpoint_heads_00_fill_participant
    BEFORE INSERT ON symphony.ledger_checkpoint_heads
    FOR EACH ROW WHEN (NEW.participant_id IS NULL)
    EXECUTE FUNCTION symphony.fill_participant_from_registry();
ALTER TABLE symphony.ledger_checkpoint_heads
    ENABLE ALWAYS TRIGGER ledger_checkpoint_heads_00_fill_participant;

-- The audit's triggers read within the item's participant: the seal finds the previous link of
-- the chain by (outbox_id, participant_id) (filled by the 00_ trigger, which fires first), and
-- the lookup mark takes the participant from the pending row it fires on. Changed from the
-- tamper-evident ledger's migration only in the participant_id conditions.
CREATE OR REPLACE FUNCTION symphony.seal_attempt() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_previous bytea;
BEGIN
    IF NEW.attempt_no = 1 THEN
        SELECT r.instruction_digest INTO v_previous
          FROM payment_instruction_registry r
         WHERE r.outbox_id = NEW.outbox_id AND r.participant_id = NEW.participant_id;
    ELSE
        SELECT a.row_digest INTO v_previous
          FROM payment_outbox_attempts a
         WHERE a.outbox_id = NEW.outbox_id AND a.attempt_no = NEW.attempt_no - 1
           AND a.participant_id = NEW.participant_id;
    END IF;
    NEW.lease_digest := sha256(uuid_send(NEW.lease_token));
    NEW.row_digest := attempt_digest(
        v_previous, NEW.outbox_id, NEW.attempt_no, NEW.state, NEW.worker_id, NEW.error_code,
        NEW.error_detail, NEW.rail_transaction_id, NEW.recorded_at, NEW.recorded_by,
        NEW.lease_digest);
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION symphony.mark_lookup_needed() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO outbox_lookup_marks (outbox_id, participant_id, attempt_no, reason)
    VALUES (NEW.outbox_id, NEW.participant_id, NEW.last_attempt_no,
            left(coalesce(NEW.last_error_code, '-'), 64))
    ON CONFLICT ON CONSTRAINT outbox_lookup_marks_pkey DO NOTHING;
    RETURN NULL;
END
$$;

-- The ledger's own checks, within the item's participant ----------------------------------------

-- The transition check (I4, I5) and the pending/terminal check (I7) read the item's rows by
-- (outbox_id, participant_id): the same index entries as before (outbox_id leads), and on a
-- sharded cluster the shard of the row being written, never a search of every shard.
-- Changed from 0003 only in the participant_id conditions.
CREATE OR REPLACE FUNCTION symphony.check_attempt_sequence() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_prev_no    integer;
    v_prev_state attempt_state;
BEGIN
    SELECT a.attempt_no, a.state
      INTO v_prev_no, v_prev_state
      FROM payment_outbox_attempts a
     WHERE a.outbox_id = NEW.outbox_id
       AND a.participant_id = NEW.participant_id
     ORDER BY a.attempt_no DESC
     LIMIT 1;

    IF NEW.attempt_no IS DISTINCT FROM coalesce(v_prev_no, 0) + 1 THEN
        RAISE EXCEPTION 'attempt_no must continue the item''s history without gaps'
            USING ERRCODE = 'SY301', CONSTRAINT = 'payment_outbox_attempts_attempt_no_dense',
                  DETAIL = format('expected %s, got %s', coalesce(v_prev_no, 0) + 1,
                                  NEW.attempt_no);
    END IF;

    IF NOT is_legal_transition(v_prev_state, NEW.state) THEN
        RAISE EXCEPTION 'illegal ledger transition'
            USING ERRCODE = 'SY300', CONSTRAINT = 'payment_outbox_attempts_legal_transition',
                  DETAIL = format('%s -> %s', coalesce(v_prev_state::text, '(start)'),
                                  NEW.state);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION symphony.check_pending_matches_ledger() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_outbox_id   uuid;
    v_participant text;
    v_terminal    boolean;
    v_pending     boolean;
BEGIN
    v_outbox_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.outbox_id ELSE NEW.outbox_id END;
    v_participant := CASE WHEN TG_OP = 'DELETE' THEN OLD.participant_id
                          ELSE NEW.participant_id END;
    v_terminal := EXISTS (
        SELECT 1 FROM payment_outbox_attempts a
         WHERE a.outbox_id = v_outbox_id AND a.participant_id = v_participant
           AND a.state IN ('DISPATCHED', 'FAILED'));
    v_pending := EXISTS (
        SELECT 1 FROM payment_outbox_pending p
         WHERE p.outbox_id = v_outbox_id AND p.participant_id = v_participant);
    IF v_terminal = v_pending THEN
        RAISE EXCEPTION 'an item is pending if and only if it has no terminal ledger row'
            USING ERRCODE = 'SY302', CONSTRAINT = 'payment_outbox_pending_matches_ledger',
                  DETAIL = format('outbox item %s: pending=%s terminal=%s',
                                  v_outbox_id, v_pending, v_terminal);
    END IF;
    RETURN NULL;
END
$$;

-- buckets -------------------------------------------------------------------------------------

-- Generated, so no writer can set a wrong one and enqueue needs no change. The formula is the
-- contract (docs/scale-out.md): the top 8 bits of the participant's hashtext, 0-255.
ALTER TABLE symphony.participants
    ADD COLUMN bucket smallint NOT NULL
        GENERATED ALWAYS AS (((hashtext(participant_id)::bigint + 2147483648) >> 24)::smallint)
        STORED;
ALTER TABLE symphony.payment_outbox_pending
    ADD COLUMN bucket smallint NOT NULL
        GENERATED ALWAYS AS (((hashtext(participant_id)::bigint + 2147483648) >> 24)::smallint)
        STORED;

CREATE INDEX participants_bucket_idx ON symphony.participants (bucket);

-- What is due in a bucket range, and which leases in it went stale: the bucket overloads'
-- counterparts of the due and lease-expiry indexes.
CREATE INDEX payment_outbox_pending_bucket_due_idx
    ON symphony.payment_outbox_pending (bucket, next_attempt_at)
    WHERE lease_token IS NULL AND review_reason IS NULL;
CREATE INDEX payment_outbox_pending_bucket_lease_expiry_idx
    ON symphony.payment_outbox_pending (bucket, lease_expires_at)
    WHERE lease_token IS NOT NULL;

-- claim, per bucket range ---------------------------------------------------------------------

-- The claim of 0006 restricted to the participants of a bucket range: every statement names
-- the range's participants (the distribution column) and the bucket, so on a sharded cluster
-- a range that lies within one shard is a single-shard statement. The old signature still
-- claims across all buckets (the single-node default).
CREATE FUNCTION symphony.claim_outbox_batch(
    p_worker_id     text,
    p_batch_size    integer,
    p_lease_seconds integer,
    p_bucket_from   integer,
    p_bucket_to     integer
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
    v_threshold    integer;
    v_participants text[];
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
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL
       OR NOT (0 <= p_bucket_from AND p_bucket_from <= p_bucket_to AND p_bucket_to <= 255) THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'claim_bucket_range';
    END IF;
    -- Participants are reference data (on every node): the range's distribution values.
    v_participants := ARRAY(
        SELECT pt.participant_id FROM participants pt
         WHERE pt.bucket BETWEEN p_bucket_from AND p_bucket_to);

    RETURN QUERY
    WITH due AS (
        SELECT p.outbox_id, p.participant_id
          FROM payment_outbox_pending p
         WHERE p.bucket BETWEEN p_bucket_from AND p_bucket_to
           AND p.participant_id = ANY (v_participants)
           AND p.lease_token IS NULL
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
           AND p.participant_id = due.participant_id
           AND p.outbox_id = ANY (ARRAY(SELECT d.outbox_id FROM due d))
           AND p.participant_id = ANY (v_participants)
        RETURNING p.outbox_id, p.participant_id, p.lease_token, p.lease_expires_at,
                  p.last_attempt_no, p.attempt_count, p.needs_lookup
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, participant_id, attempt_no, state, worker_id, lease_token)
        SELECT l.outbox_id, l.participant_id, l.last_attempt_no, 'DISPATCHING', p_worker_id,
               l.lease_token
          FROM leased l
        RETURNING 1
    )
    SELECT l.outbox_id, l.lease_token, l.lease_expires_at, l.last_attempt_no, l.attempt_count,
           l.needs_lookup, r.participant_id, r.sequence_id, r.instruction_id, r.rail_type,
           r.payload
      FROM leased l
      -- By both key columns, nothing more: the registry's (outbox_id, participant_id) key.
      JOIN payment_instruction_registry r
        ON r.outbox_id = l.outbox_id AND r.participant_id = l.participant_id
     ORDER BY r.participant_id, r.sequence_id;
END
$$;

-- complete, per bucket range ------------------------------------------------------------------

-- The completion of 0006, with every statement restricted to the range's participants and
-- buckets. An item outside the range is not held by this statement: it is answered FENCED
-- and nothing is written for it (as for a stale lease, I9).
CREATE FUNCTION symphony.complete_outbox_batch(
    p_outbox_ids           uuid[],
    p_lease_tokens         uuid[],
    p_outcomes             text[],
    p_error_codes          text[],
    p_error_details        text[],
    p_ambiguous            boolean[],
    p_rail_transaction_ids text[],
    p_bucket_from          integer,
    p_bucket_to            integer
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
    v_n            integer := coalesce(cardinality(p_outbox_ids), 0);
    v_participants text[];
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
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL
       OR NOT (0 <= p_bucket_from AND p_bucket_from <= p_bucket_to AND p_bucket_to <= 255) THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'complete_bucket_range';
    END IF;
    v_participants := ARRAY(
        SELECT pt.participant_id FROM participants pt
         WHERE pt.bucket BETWEEN p_bucket_from AND p_bucket_to);

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
    held AS (
        SELECT p.outbox_id, p.participant_id, p.attempt_count, p.last_attempt_no, p.claimed_by,
               p.lease_token, p.needs_lookup
          FROM payment_outbox_pending p
          JOIN input i ON i.outbox_id = p.outbox_id AND i.lease_token = p.lease_token
         WHERE p.outbox_id = ANY (p_outbox_ids)
           -- The range's participants are the range (a bucket is a function of the
           -- participant): both key columns, so the primary key finds the few rows.
           AND p.participant_id = ANY (v_participants)
           FOR UPDATE OF p
    ),
    judged AS (
        SELECT h.*, i.outcome, i.error_code, i.error_detail, i.ambiguous, i.rail_tx,
               (h.needs_lookup OR i.ambiguous) AS unsettled,
               (i.outcome = 'FAILED' AND h.needs_lookup) AS held_open,
               (h.attempt_count >= pol.max_attempts) AS at_ceiling
          FROM held h
          JOIN input i ON i.outbox_id = h.outbox_id
          CROSS JOIN policy pol
    ),
    decided AS (
        SELECT j.outbox_id, j.participant_id, j.claimed_by, j.lease_token,
               j.last_attempt_no + 1 AS attempt_no, j.unsettled, j.rail_tx,
               CASE
                   WHEN j.outcome = 'DISPATCHED' THEN 'DISPATCHED'
                   WHEN j.outcome = 'FAILED' AND NOT j.held_open THEN 'FAILED'
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
               CASE
                   WHEN j.outcome <> 'DISPATCHED' AND j.at_ceiling AND j.unsettled
                        AND NOT (j.outcome = 'FAILED' AND NOT j.held_open)
                       THEN 'UNSETTLED_AT_RETRY_LIMIT'
               END AS review_reason,
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
            (outbox_id, participant_id, attempt_no, state, worker_id, lease_token, error_code,
             error_detail, rail_transaction_id)
        SELECT d.outbox_id, d.participant_id, d.attempt_no, d.state, d.claimed_by,
               d.lease_token, d.error_code, d.error_detail, left(d.rail_tx, 200)
          FROM decided d
        RETURNING outbox_id
    ),
    finished AS (
        DELETE FROM payment_outbox_pending p
         USING decided d
         WHERE p.outbox_id = d.outbox_id AND p.participant_id = d.participant_id
           AND d.state IN ('DISPATCHED', 'FAILED')
           AND p.outbox_id = ANY (p_outbox_ids)
           AND p.participant_id = ANY (v_participants)
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
         WHERE p.outbox_id = d.outbox_id AND p.participant_id = d.participant_id
           AND d.state = 'RETRYABLE'
           AND p.outbox_id = ANY (p_outbox_ids)
           AND p.participant_id = ANY (v_participants)
        RETURNING p.outbox_id, p.next_attempt_at, p.review_reason
    )
    SELECT i.outbox_id,
           CASE WHEN d.outbox_id IS NULL THEN 'FENCED' ELSE 'COMPLETED' END,
           d.state::text,
           d.attempt_no,
           CASE WHEN r.review_reason IS NULL THEN r.next_attempt_at END
      FROM input i
      LEFT JOIN decided d ON d.outbox_id = i.outbox_id
      LEFT JOIN rescheduled r ON r.outbox_id = i.outbox_id;
END
$$;

-- repair, per bucket range --------------------------------------------------------------------

-- The repair of 0006 restricted to a bucket range, so each worker can repair its own buckets
-- (a fleet covers every bucket; the old signature still repairs across all of them).
CREATE FUNCTION symphony.repair_expired_leases(
    p_limit             integer,
    p_threshold_seconds integer,
    p_bucket_from       integer,
    p_bucket_to         integer
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
    v_repaired     integer;
    v_settle       interval;
    v_participants text[];
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'repair limit must be between 1 and 100000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'repair_limit';
    END IF;
    IF p_threshold_seconds IS NOT NULL AND p_threshold_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'zombie threshold must be between 1 and 86400 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'repair_threshold';
    END IF;
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL
       OR NOT (0 <= p_bucket_from AND p_bucket_from <= p_bucket_to AND p_bucket_to <= 255) THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'repair_bucket_range';
    END IF;
    SELECT make_interval(secs => pol.ambiguous_settle_ms / 1000.0) INTO v_settle
      FROM outbox_retry_policy pol WHERE pol.singleton;
    v_participants := ARRAY(
        SELECT pt.participant_id FROM participants pt
         WHERE pt.bucket BETWEEN p_bucket_from AND p_bucket_to);

    RETURN QUERY
    WITH stale AS (
        SELECT p.outbox_id, p.participant_id, p.claimed_by, p.lease_token, p.lease_expires_at
          FROM payment_outbox_pending p
         WHERE p.bucket BETWEEN p_bucket_from AND p_bucket_to
           AND p.participant_id = ANY (v_participants)
           AND p.lease_token IS NOT NULL
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
         WHERE p.outbox_id = s.outbox_id AND p.participant_id = s.participant_id
           AND p.outbox_id = ANY (ARRAY(SELECT x.outbox_id FROM stale x))
           AND p.participant_id = ANY (v_participants)
        RETURNING p.outbox_id, p.participant_id, p.last_attempt_no, p.attempt_count
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, participant_id, attempt_no, state, worker_id, lease_token, error_code,
             error_detail)
        SELECT q.outbox_id, q.participant_id, q.last_attempt_no, 'ZOMBIE_REQUEUE', s.claimed_by,
               s.lease_token, 'LEASE_EXPIRED',
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

-- participant-scoped reads: co-located joins ----------------------------------------------------

-- The same view and history function, joining the pending row and the ledger on the item's
-- participant as well as its outbox_id: a join on the distribution column stays on one shard.
CREATE OR REPLACE VIEW symphony.participant_payment_view AS
SELECT r.participant_id,
       r.sequence_id,
       r.outbox_id,
       r.instruction_id,
       r.idempotency_key,
       r.rail_type,
       r.payload,
       CASE
           WHEN l.state IN ('DISPATCHED', 'FAILED') THEN l.state::text
           WHEN p.lease_token IS NOT NULL THEN 'DISPATCHING'
           WHEN l.state = 'RETRYABLE' THEN 'RETRYABLE'
           ELSE 'PENDING'
       END AS state,
       coalesce(p.attempt_count,
                (SELECT count(*) FROM symphony.payment_outbox_attempts d
                  WHERE d.outbox_id = r.outbox_id AND d.participant_id = r.participant_id
                    AND d.state = 'DISPATCHING'))::integer
           AS attempt_count,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED') THEN NULL ELSE p.next_attempt_at END
           AS next_attempt_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED') THEN l.error_code
            ELSE p.last_error_code END AS last_error_code,
       r.created_at,
       coalesce(l.recorded_at, r.created_at) AS updated_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED') THEN l.recorded_at END AS terminal_at
  FROM symphony.payment_instruction_registry r
  LEFT JOIN LATERAL (
      SELECT q.lease_token, q.attempt_count, q.next_attempt_at, q.last_error_code
        FROM symphony.payment_outbox_pending q
       WHERE q.outbox_id = r.outbox_id AND q.participant_id = r.participant_id
       LIMIT 1
  ) p ON true
  LEFT JOIN LATERAL (
      SELECT a.state, a.error_code, a.recorded_at
        FROM symphony.payment_outbox_attempts a
       WHERE a.outbox_id = r.outbox_id AND a.participant_id = r.participant_id
       ORDER BY a.attempt_no DESC
       LIMIT 1
  ) l ON true;

CREATE OR REPLACE FUNCTION symphony.participant_payment_attempts(
    p_participant_id text,
    p_outbox_id      uuid
) RETURNS TABLE (
    attempt_no          integer,
    state               text,
    error_code          text,
    error_detail        text,
    rail_transaction_id text,
    recorded_at         timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT a.attempt_no, a.state::text, a.error_code,
           CASE WHEN a.state = 'ZOMBIE_REQUEUE'
                THEN 'the dispatch did not report back in time; the payment was requeued'
                ELSE a.error_detail END,
           a.rail_transaction_id, a.recorded_at
      FROM payment_instruction_registry r
      JOIN payment_outbox_attempts a
        ON a.outbox_id = r.outbox_id AND a.participant_id = r.participant_id
     WHERE r.outbox_id = p_outbox_id
       AND r.participant_id = p_participant_id
       AND a.participant_id = p_participant_id
     ORDER BY a.attempt_no
$$;

RESET ROLE;

-- grants --------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION
    symphony.claim_outbox_batch(text, integer, integer, integer, integer),
    symphony.complete_outbox_batch(uuid[], uuid[], text[], text[], text[], boolean[], text[],
                                   integer, integer),
    symphony.repair_expired_leases(integer, integer, integer, integer),
    symphony.fill_participant_from_registry()
    FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    symphony.claim_outbox_batch(text, integer, integer, integer, integer),
    symphony.complete_outbox_batch(uuid[], uuid[], text[], text[], text[], boolean[], text[],
                                   integer, integer)
    TO symphony_executor;
GRANT EXECUTE ON FUNCTION symphony.repair_expired_leases(integer, integer, integer, integer)
    TO symphony_executor, symphony_control;

-- The readers' column grants gain the new key column and the bucket (not secret: a bucket is
-- a hash of the participant's id).
GRANT SELECT (participant_id) ON symphony.payment_outbox_attempts
    TO symphony_readonly, symphony_auditor, symphony_control;
GRANT SELECT (bucket) ON symphony.payment_outbox_pending
    TO symphony_readonly, symphony_auditor, symphony_control;
