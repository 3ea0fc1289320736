-- Tamper-evident ledger, durable ambiguity marks, checkpoints and the auditor's functions.
--
-- Why: the append-only triggers stop every role, the owner included, but not a superuser (or
-- a restored backup) that disables them. This migration makes such a change detectable and
-- locatable by `symphony audit verify`:
-- * Each registry row carries instruction_digest = sha256 over the instruction's canonical
--   text (outbox_id, participant, instruction id, idempotency key, rail, payload, created_at),
--   so an edited amount or destination shows.
-- * Each ledger row carries row_digest = sha256(previous digest || canonical row text): the
--   previous digest is that of the item's row attempt_no - 1, or the instruction digest for
--   attempt 1. The row text covers outbox_id, attempt_no, state, worker_id, error_code,
--   error_detail, rail_transaction_id, recorded_at (microseconds since the epoch),
--   recorded_by and lease_digest = sha256 of the lease token's 16 bytes (never the token,
--   which no role may read). Each field is written as `<characters>:<text>` (NULL as `-`) and
--   joined with `|` after a version tag, so no two rows serialize alike (docs/audit.md).
--   Both digests are computed here, by BEFORE INSERT triggers, whoever inserts.
-- * outbox_lookup_marks keeps, for good, the first attempt after which an item needs a
--   lookup (needs_lookup flips to true: an ambiguous completion or a zombie requeue). The
--   pending row, which carries the flag, disappears with the item; the mark lets the auditor
--   prove afterwards that no FAILED followed an ambiguous attempt (I10).
-- * ledger_checkpoints anchor every chain: a digest over all chain heads in outbox_id order,
--   the row count and the highest attempt_id covered, chained to the previous checkpoint and
--   copied out by auditors (`symphony audit export-checkpoints`). ledger_checkpoint_heads keeps
--   the heads that changed since the previous checkpoint, so a rewritten chain is located.
-- * SECURITY DEFINER audit functions check what the auditor may not read itself (sequence_id,
--   lease tokens) and return only ids and problem codes.
-- Existing rows are backfilled. The append-only triggers refuse UPDATE even to the owner, so
-- the backfill disables exactly those two triggers inside this migration's transaction and
-- re-enables them ALWAYS before it commits: no other session can write in between (ALTER TABLE
-- holds an ACCESS EXCLUSIVE lock until commit), and a failure rolls the whole step back.

SET LOCAL ROLE symphony_owner;

-- canonical serialization -------------------------------------------------------------------

CREATE FUNCTION symphony.digest_field(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_value IS NULL THEN '-'
                ELSE char_length(p_value)::text || ':' || p_value END
$$;

CREATE FUNCTION symphony.digest_micros(p_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT (extract(epoch FROM p_at) * 1000000)::bigint::text
$$;

CREATE FUNCTION symphony.instruction_digest(
    p_outbox_id uuid, p_participant_id text, p_instruction_id text, p_idempotency_key text,
    p_rail_type text, p_payload jsonb, p_created_at timestamptz
) RETURNS bytea
LANGUAGE sql IMMUTABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT sha256(convert_to(
        'symphony-instruction-v1'
        || '|' || digest_field(p_outbox_id::text)
        || '|' || digest_field(p_participant_id)
        || '|' || digest_field(p_instruction_id)
        || '|' || digest_field(p_idempotency_key)
        || '|' || digest_field(p_rail_type)
        || '|' || digest_field(p_payload::text)
        || '|' || digest_field(digest_micros(p_created_at)), 'UTF8'))
$$;

CREATE FUNCTION symphony.attempt_digest(
    p_previous bytea, p_outbox_id uuid, p_attempt_no integer, p_state symphony.attempt_state,
    p_worker_id text, p_error_code text, p_error_detail text, p_rail_transaction_id text,
    p_recorded_at timestamptz, p_recorded_by text, p_lease_digest bytea
) RETURNS bytea
LANGUAGE sql IMMUTABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT sha256(coalesce(p_previous, ''::bytea) || convert_to(
        'symphony-attempt-v1'
        || '|' || digest_field(p_outbox_id::text)
        || '|' || digest_field(p_attempt_no::text)
        || '|' || digest_field(p_state::text)
        || '|' || digest_field(p_worker_id)
        || '|' || digest_field(p_error_code)
        || '|' || digest_field(p_error_detail)
        || '|' || digest_field(p_rail_transaction_id)
        || '|' || digest_field(digest_micros(p_recorded_at))
        || '|' || digest_field(p_recorded_by)
        || '|' || digest_field(encode(p_lease_digest, 'hex')), 'UTF8'))
$$;

-- digests on the registry and the ledger ----------------------------------------------------

ALTER TABLE symphony.payment_instruction_registry ADD COLUMN instruction_digest bytea;
ALTER TABLE symphony.payment_outbox_attempts
    ADD COLUMN lease_digest bytea,
    ADD COLUMN row_digest bytea;

CREATE FUNCTION symphony.seal_instruction() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    NEW.instruction_digest := instruction_digest(
        NEW.outbox_id, NEW.participant_id, NEW.instruction_id, NEW.idempotency_key,
        NEW.rail_type, NEW.payload, NEW.created_at);
    RETURN NEW;
END
$$;

-- Fires after payment_outbox_attempts_legal_transition (BEFORE triggers run in name order),
-- so only a row the ledger accepts is sealed, over its final values.
CREATE FUNCTION symphony.seal_attempt() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_previous bytea;
BEGIN
    IF NEW.attempt_no = 1 THEN
        SELECT r.instruction_digest INTO v_previous
          FROM payment_instruction_registry r WHERE r.outbox_id = NEW.outbox_id;
    ELSE
        SELECT a.row_digest INTO v_previous
          FROM payment_outbox_attempts a
         WHERE a.outbox_id = NEW.outbox_id AND a.attempt_no = NEW.attempt_no - 1;
    END IF;
    NEW.lease_digest := sha256(uuid_send(NEW.lease_token));
    NEW.row_digest := attempt_digest(
        v_previous, NEW.outbox_id, NEW.attempt_no, NEW.state, NEW.worker_id, NEW.error_code,
        NEW.error_detail, NEW.rail_transaction_id, NEW.recorded_at, NEW.recorded_by,
        NEW.lease_digest);
    RETURN NEW;
END
$$;

-- Backfill (see the header for why the append-only triggers are off for these statements).
ALTER TABLE symphony.payment_instruction_registry
    DISABLE TRIGGER payment_instruction_registry_append_only;
ALTER TABLE symphony.payment_outbox_attempts
    DISABLE TRIGGER payment_outbox_attempts_append_only;

UPDATE symphony.payment_instruction_registry r
   SET instruction_digest = symphony.instruction_digest(
       r.outbox_id, r.participant_id, r.instruction_id, r.idempotency_key, r.rail_type,
       r.payload, r.created_at);

UPDATE symphony.payment_outbox_attempts a
   SET lease_digest = sha256(uuid_send(a.lease_token));

-- One statement per attempt number: each level chains onto the level before it.
DO $backfill$
DECLARE
    v_level integer := 1;
    v_max   integer;
BEGIN
    SELECT coalesce(max(a.attempt_no), 0) INTO v_max FROM symphony.payment_outbox_attempts a;
    WHILE v_level <= v_max LOOP
        UPDATE symphony.payment_outbox_attempts a
           SET row_digest = symphony.attempt_digest(
               CASE WHEN a.attempt_no = 1 THEN r.instruction_digest ELSE p.row_digest END,
               a.outbox_id, a.attempt_no, a.state, a.worker_id, a.error_code, a.error_detail,
               a.rail_transaction_id, a.recorded_at, a.recorded_by, a.lease_digest)
          FROM symphony.payment_instruction_registry r
          LEFT JOIN symphony.payment_outbox_attempts p
            ON p.outbox_id = r.outbox_id AND p.attempt_no = v_level - 1
         WHERE r.outbox_id = a.outbox_id AND a.attempt_no = v_level;
        v_level := v_level + 1;
    END LOOP;
END
$backfill$;

ALTER TABLE symphony.payment_instruction_registry
    ENABLE ALWAYS TRIGGER payment_instruction_registry_append_only;
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_append_only;

ALTER TABLE symphony.payment_instruction_registry
    ALTER COLUMN instruction_digest SET NOT NULL,
    ADD CONSTRAINT payment_instruction_registry_instruction_digest_length
        CHECK (octet_length(instruction_digest) = 32);
ALTER TABLE symphony.payment_outbox_attempts
    ALTER COLUMN row_digest SET NOT NULL,
    ADD CONSTRAINT payment_outbox_attempts_row_digest_length
        CHECK (octet_length(row_digest) = 32),
    ADD CONSTRAINT payment_outbox_attempts_lease_digest_length
        CHECK (octet_length(lease_digest) = 32);

CREATE TRIGGER payment_instruction_registry_seal
    BEFORE INSERT ON symphony.payment_instruction_registry
    FOR EACH ROW EXECUTE FUNCTION symphony.seal_instruction();
CREATE TRIGGER payment_outbox_attempts_seal
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH ROW EXECUTE FUNCTION symphony.seal_attempt();
ALTER TABLE symphony.payment_instruction_registry
    ENABLE ALWAYS TRIGGER payment_instruction_registry_seal;
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_seal;

-- An incremental audit (`--since`) finds the recent items by these.
CREATE INDEX payment_outbox_attempts_recorded_at_idx
    ON symphony.payment_outbox_attempts (recorded_at);
CREATE INDEX payment_instruction_registry_created_at_idx
    ON symphony.payment_instruction_registry (created_at);

-- ambiguity marks -----------------------------------------------------------------------------

CREATE TABLE symphony.outbox_lookup_marks (
    outbox_id  uuid        NOT NULL,
    -- The ledger row after which the item needed a lookup (the ambiguous RETRYABLE or the
    -- ZOMBIE_REQUEUE); the item's last_attempt_no for marks backfilled by this migration.
    attempt_no integer     NOT NULL,
    reason     text        NOT NULL,
    marked_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT outbox_lookup_marks_pkey PRIMARY KEY (outbox_id),
    CONSTRAINT outbox_lookup_marks_outbox_id_fkey
        FOREIGN KEY (outbox_id) REFERENCES symphony.payment_instruction_registry (outbox_id),
    CONSTRAINT outbox_lookup_marks_attempt_no_nonnegative CHECK (attempt_no >= 0)
);

INSERT INTO symphony.outbox_lookup_marks (outbox_id, attempt_no, reason)
SELECT p.outbox_id, p.last_attempt_no, 'BACKFILL'
  FROM symphony.payment_outbox_pending p
 WHERE p.needs_lookup;

-- needs_lookup is sticky: the first flip is the one that matters, later ones change nothing.
CREATE FUNCTION symphony.mark_lookup_needed() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO outbox_lookup_marks (outbox_id, attempt_no, reason)
    VALUES (NEW.outbox_id, NEW.last_attempt_no, left(coalesce(NEW.last_error_code, '-'), 64))
    ON CONFLICT ON CONSTRAINT outbox_lookup_marks_pkey DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER payment_outbox_pending_mark_lookup
    AFTER UPDATE ON symphony.payment_outbox_pending
    FOR EACH ROW WHEN (NEW.needs_lookup AND NOT OLD.needs_lookup)
    EXECUTE FUNCTION symphony.mark_lookup_needed();
CREATE TRIGGER payment_outbox_pending_mark_lookup_insert
    AFTER INSERT ON symphony.payment_outbox_pending
    FOR EACH ROW WHEN (NEW.needs_lookup)
    EXECUTE FUNCTION symphony.mark_lookup_needed();
CREATE TRIGGER outbox_lookup_marks_append_only
    BEFORE UPDATE OR DELETE ON symphony.outbox_lookup_marks
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();
CREATE TRIGGER outbox_lookup_marks_no_truncate
    BEFORE TRUNCATE ON symphony.outbox_lookup_marks
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();
ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_mark_lookup,
    ENABLE ALWAYS TRIGGER payment_outbox_pending_mark_lookup_insert;
ALTER TABLE symphony.outbox_lookup_marks
    ENABLE ALWAYS TRIGGER outbox_lookup_marks_append_only,
    ENABLE ALWAYS TRIGGER outbox_lookup_marks_no_truncate;

-- checkpoints ---------------------------------------------------------------------------------

CREATE TABLE symphony.ledger_checkpoints (
    checkpoint_id     bigint      NOT NULL,
    taken_at          timestamptz NOT NULL,
    -- Every ledger row with attempt_id <= up_to_attempt_id, and no other, is covered.
    up_to_attempt_id  bigint      NOT NULL,
    row_count         bigint      NOT NULL,
    item_count        bigint      NOT NULL,
    -- sha256 over "<outbox_id>:<attempt_no>:<row_digest hex>" of every chain head, in
    -- outbox_id order, joined by newlines.
    heads_digest      bytea       NOT NULL,
    previous_digest   bytea,
    checkpoint_digest bytea       NOT NULL,
    taken_by          text        NOT NULL,
    CONSTRAINT ledger_checkpoints_pkey PRIMARY KEY (checkpoint_id),
    CONSTRAINT ledger_checkpoints_id_positive CHECK (checkpoint_id >= 1),
    CONSTRAINT ledger_checkpoints_counts_nonnegative
        CHECK (up_to_attempt_id >= 0 AND row_count >= 0 AND item_count >= 0)
);

CREATE TABLE symphony.ledger_checkpoint_heads (
    checkpoint_id bigint  NOT NULL,
    outbox_id     uuid    NOT NULL,
    attempt_no    integer NOT NULL,
    row_digest    bytea   NOT NULL,
    CONSTRAINT ledger_checkpoint_heads_pkey PRIMARY KEY (checkpoint_id, outbox_id),
    CONSTRAINT ledger_checkpoint_heads_checkpoint_fkey
        FOREIGN KEY (checkpoint_id) REFERENCES symphony.ledger_checkpoints (checkpoint_id)
);

CREATE INDEX ledger_checkpoint_heads_outbox_idx
    ON symphony.ledger_checkpoint_heads (outbox_id, checkpoint_id);

CREATE TRIGGER ledger_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON symphony.ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();
CREATE TRIGGER ledger_checkpoints_no_truncate
    BEFORE TRUNCATE ON symphony.ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();
CREATE TRIGGER ledger_checkpoint_heads_append_only
    BEFORE UPDATE OR DELETE ON symphony.ledger_checkpoint_heads
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();
CREATE TRIGGER ledger_checkpoint_heads_no_truncate
    BEFORE TRUNCATE ON symphony.ledger_checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();
ALTER TABLE symphony.ledger_checkpoints
    ENABLE ALWAYS TRIGGER ledger_checkpoints_append_only,
    ENABLE ALWAYS TRIGGER ledger_checkpoints_no_truncate;
ALTER TABLE symphony.ledger_checkpoint_heads
    ENABLE ALWAYS TRIGGER ledger_checkpoint_heads_append_only,
    ENABLE ALWAYS TRIGGER ledger_checkpoint_heads_no_truncate;

-- Take a checkpoint. Ledger inserts wait while it runs (SHARE lock): once the lock is held,
-- every row numbered up to the highest attempt_id is committed and visible, so the checkpoint
-- covers exactly the rows attempt_id <= up_to_attempt_id. Checkpoints queue on their table's
-- lock, so each one chains onto the one before.
CREATE FUNCTION symphony.take_ledger_checkpoint() RETURNS TABLE (
    checkpoint_id     bigint,
    taken_at          timestamptz,
    up_to_attempt_id  bigint,
    row_count         bigint,
    item_count        bigint,
    heads_digest      bytea,
    previous_digest   bytea,
    checkpoint_digest bytea,
    taken_by          text,
    changed_items     bigint
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_prev_id     bigint;
    v_prev_up_to  bigint;
    v_prev_digest bytea;
    v_id          bigint;
    v_at          timestamptz;
    v_up_to       bigint;
    v_rows        bigint;
    v_items       bigint;
    v_heads       bytea;
    v_digest      bytea;
    v_changed     bigint;
BEGIN
    -- Under REPEATABLE READ the snapshot would predate the lock and miss committed rows.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a ledger checkpoint must be taken in a READ COMMITTED transaction'
            USING ERRCODE = 'SY050', CONSTRAINT = 'ledger_checkpoint_isolation';
    END IF;
    LOCK TABLE ledger_checkpoints IN EXCLUSIVE MODE;
    LOCK TABLE payment_outbox_attempts IN SHARE MODE;

    SELECT c.checkpoint_id, c.up_to_attempt_id, c.checkpoint_digest
      INTO v_prev_id, v_prev_up_to, v_prev_digest
      FROM ledger_checkpoints c ORDER BY c.checkpoint_id DESC LIMIT 1;
    v_id := coalesce(v_prev_id, 0) + 1;
    v_at := clock_timestamp();

    SELECT coalesce(max(a.attempt_id), 0), count(*) INTO v_up_to, v_rows
      FROM payment_outbox_attempts a;

    SELECT count(*),
           sha256(convert_to(coalesce(string_agg(
               h.outbox_id::text || ':' || h.attempt_no::text || ':'
                   || encode(h.row_digest, 'hex'),
               E'\n' ORDER BY h.outbox_id), ''), 'UTF8'))
      INTO v_items, v_heads
      FROM (SELECT DISTINCT ON (a.outbox_id) a.outbox_id, a.attempt_no, a.row_digest
              FROM payment_outbox_attempts a
             WHERE a.attempt_id <= v_up_to
             ORDER BY a.outbox_id, a.attempt_no DESC) h;

    v_digest := sha256(coalesce(v_prev_digest, ''::bytea) || convert_to(
        'symphony-checkpoint-v1'
        || '|' || digest_field(v_id::text)
        || '|' || digest_field(digest_micros(v_at))
        || '|' || digest_field(v_up_to::text)
        || '|' || digest_field(v_rows::text)
        || '|' || digest_field(v_items::text)
        || '|' || digest_field(encode(v_heads, 'hex'))
        || '|' || digest_field(session_user::text), 'UTF8'));

    INSERT INTO ledger_checkpoints
        (checkpoint_id, taken_at, up_to_attempt_id, row_count, item_count, heads_digest,
         previous_digest, checkpoint_digest, taken_by)
    VALUES (v_id, v_at, v_up_to, v_rows, v_items, v_heads, v_prev_digest, v_digest,
            session_user);

    -- The heads of the items that moved since the previous checkpoint.
    INSERT INTO ledger_checkpoint_heads (checkpoint_id, outbox_id, attempt_no, row_digest)
    SELECT v_id, h.outbox_id, h.attempt_no, h.row_digest
      FROM (SELECT DISTINCT ON (a.outbox_id) a.outbox_id, a.attempt_no, a.row_digest
              FROM payment_outbox_attempts a
             WHERE a.attempt_id <= v_up_to
               AND a.outbox_id IN (SELECT m.outbox_id FROM payment_outbox_attempts m
                                    WHERE m.attempt_id > coalesce(v_prev_up_to, 0)
                                      AND m.attempt_id <= v_up_to)
             ORDER BY a.outbox_id, a.attempt_no DESC) h;
    GET DIAGNOSTICS v_changed = ROW_COUNT;

    RETURN QUERY SELECT v_id, v_at, v_up_to, v_rows, v_items, v_heads, v_prev_digest, v_digest,
                        session_user::text, v_changed;
END
$$;

-- the auditor's functions -------------------------------------------------------------------

-- Items an incremental audit looks at: registered, or with a ledger row, at or after p_since
-- (every item when p_since is NULL).
CREATE FUNCTION symphony.audit_scope(p_since timestamptz) RETURNS TABLE (outbox_id uuid)
LANGUAGE sql STABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT r.outbox_id FROM payment_instruction_registry r
     WHERE p_since IS NULL OR r.created_at >= p_since
    UNION
    SELECT a.outbox_id FROM payment_outbox_attempts a
     WHERE p_since IS NOT NULL AND a.recorded_at >= p_since
$$;

-- I8 on what the auditor may not read: a participant's sequence numbers are unique, dense
-- from 1 (the allocator's row lock hands them out one by one, in the enqueue's transaction),
-- never ahead of the allocator, and the pending row keeps its registry's number. Only the
-- item, its participant and the problem come back: no sequence number, no volume.
CREATE FUNCTION symphony.audit_sequence_violations(
    p_since timestamptz DEFAULT NULL,
    p_limit integer DEFAULT 100
) RETURNS TABLE (
    outbox_id      uuid,
    participant_id text,
    problem        text,
    total          bigint
)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    WITH participants_in_scope AS (
        SELECT DISTINCT r.participant_id
          FROM payment_instruction_registry r
         WHERE p_since IS NULL OR r.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s)
    ),
    ordered AS (
        SELECT r.outbox_id, r.participant_id, r.sequence_id,
               lag(r.sequence_id) OVER w AS previous_sequence_id
          FROM payment_instruction_registry r
         WHERE p_since IS NULL
            OR r.participant_id IN (SELECT q.participant_id FROM participants_in_scope q)
        WINDOW w AS (PARTITION BY r.participant_id ORDER BY r.sequence_id, r.outbox_id)
    ),
    violations AS (
        SELECT o.outbox_id, o.participant_id,
               CASE
                   WHEN o.sequence_id < 1 THEN 'SEQUENCE_NOT_POSITIVE'
                   WHEN o.sequence_id = o.previous_sequence_id THEN 'DUPLICATE_SEQUENCE'
                   WHEN o.sequence_id <> coalesce(o.previous_sequence_id, 0) + 1
                       THEN 'SEQUENCE_GAP'
               END AS problem
          FROM ordered o
        UNION ALL
        SELECT NULL::uuid, m.participant_id, 'ALLOCATOR_BEHIND'
          FROM (SELECT o.participant_id, max(o.sequence_id) AS top
                  FROM ordered o GROUP BY o.participant_id) m
          LEFT JOIN participant_outbox_sequences s ON s.participant_id = m.participant_id
         WHERE s.last_sequence_id IS NULL OR s.last_sequence_id < m.top
        UNION ALL
        SELECT p.outbox_id, p.participant_id, 'PENDING_SEQUENCE_MISMATCH'
          FROM payment_outbox_pending p
          JOIN payment_instruction_registry r ON r.outbox_id = p.outbox_id
         WHERE (r.sequence_id <> p.sequence_id OR r.participant_id <> p.participant_id)
           AND (p_since IS NULL OR p.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s))
    )
    SELECT v.outbox_id, v.participant_id, v.problem, count(*) OVER () AS total
      FROM violations v
     WHERE v.problem IS NOT NULL
     ORDER BY v.participant_id, v.outbox_id
     LIMIT p_limit
$$;

-- I9 on what no role may read: every DISPATCHED, FAILED, RETRYABLE and ZOMBIE_REQUEUE row
-- directly follows a DISPATCHING row of the same lease token; every DISPATCHING row has a
-- token of its own; a live lease is the one its item's open DISPATCHING row was written with;
-- each lease_digest is the digest of its token. Tokens are compared here, never returned.
CREATE FUNCTION symphony.audit_lease_violations(
    p_since timestamptz DEFAULT NULL,
    p_limit integer DEFAULT 100
) RETURNS TABLE (
    outbox_id  uuid,
    attempt_no integer,
    problem    text,
    total      bigint
)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    WITH rows_in_scope AS (
        SELECT a.outbox_id, a.attempt_no, a.state, a.lease_token, a.lease_digest,
               lag(a.state) OVER w AS previous_state,
               lag(a.attempt_no) OVER w AS previous_attempt_no,
               lag(a.lease_token) OVER w AS previous_token,
               row_number() OVER (PARTITION BY a.outbox_id ORDER BY a.attempt_no DESC) AS from_end
          FROM payment_outbox_attempts a
         WHERE p_since IS NULL OR a.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s)
        WINDOW w AS (PARTITION BY a.outbox_id ORDER BY a.attempt_no)
    ),
    violations AS (
        SELECT x.outbox_id, x.attempt_no,
               CASE
                   WHEN x.state = 'DISPATCHING' AND x.lease_token IS NULL
                       THEN 'DISPATCHING_WITHOUT_LEASE'
                   WHEN x.state <> 'DISPATCHING'
                        AND (x.previous_state IS DISTINCT FROM 'DISPATCHING'
                             OR x.previous_attempt_no <> x.attempt_no - 1)
                       THEN 'NO_PRECEDING_DISPATCHING'
                   WHEN x.state <> 'DISPATCHING'
                        AND (x.lease_token IS NULL OR x.lease_token <> x.previous_token)
                       THEN 'LEASE_MISMATCH'
                   WHEN x.lease_digest IS DISTINCT FROM sha256(uuid_send(x.lease_token))
                       THEN 'LEASE_DIGEST_MISMATCH'
               END AS problem
          FROM rows_in_scope x
        UNION ALL
        SELECT min(x.outbox_id::text)::uuid, NULL::integer, 'LEASE_TOKEN_REUSED'
          FROM rows_in_scope x
         WHERE x.state = 'DISPATCHING' AND x.lease_token IS NOT NULL
         GROUP BY x.lease_token
        HAVING count(*) > 1
        UNION ALL
        SELECT p.outbox_id, x.attempt_no,
               CASE
                   WHEN p.lease_token IS NOT NULL AND (x.state IS DISTINCT FROM 'DISPATCHING'
                        OR x.lease_token IS DISTINCT FROM p.lease_token)
                       THEN 'LIVE_LEASE_NOT_IN_LEDGER'
                   WHEN p.lease_token IS NULL AND x.state = 'DISPATCHING'
                       THEN 'OPEN_DISPATCHING_WITHOUT_LEASE'
               END
          FROM payment_outbox_pending p
          LEFT JOIN rows_in_scope x ON x.outbox_id = p.outbox_id AND x.from_end = 1
         WHERE p_since IS NULL OR p.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s)
    )
    SELECT v.outbox_id, v.attempt_no, v.problem, count(*) OVER () AS total
      FROM violations v
     WHERE v.problem IS NOT NULL
     ORDER BY v.outbox_id, v.attempt_no
     LIMIT p_limit
$$;

RESET ROLE;

-- grants ----------------------------------------------------------------------------------------

REVOKE ALL ON symphony.outbox_lookup_marks, symphony.ledger_checkpoints,
              symphony.ledger_checkpoint_heads FROM PUBLIC;
REVOKE ALL ON FUNCTION
    symphony.digest_field(text),
    symphony.digest_micros(timestamptz),
    symphony.instruction_digest(uuid, text, text, text, text, jsonb, timestamptz),
    symphony.attempt_digest(bytea, uuid, integer, symphony.attempt_state, text, text, text,
                            text, timestamptz, text, bytea),
    symphony.seal_instruction(),
    symphony.seal_attempt(),
    symphony.mark_lookup_needed(),
    symphony.take_ledger_checkpoint(),
    symphony.audit_scope(timestamptz),
    symphony.audit_sequence_violations(timestamptz, integer),
    symphony.audit_lease_violations(timestamptz, integer)
    FROM PUBLIC;

GRANT EXECUTE ON FUNCTION symphony.take_ledger_checkpoint() TO symphony_control;
GRANT EXECUTE ON FUNCTION
    symphony.audit_sequence_violations(timestamptz, integer),
    symphony.audit_lease_violations(timestamptz, integer)
    TO symphony_auditor;

-- The digests are what an auditor recomputes; a token's digest does not open its lease.
GRANT SELECT (row_digest, lease_digest) ON symphony.payment_outbox_attempts TO symphony_auditor;
GRANT SELECT (instruction_digest) ON symphony.payment_instruction_registry TO symphony_auditor;
GRANT SELECT ON symphony.outbox_lookup_marks TO symphony_auditor, symphony_readonly,
                                              symphony_control;
GRANT SELECT ON symphony.ledger_checkpoints, symphony.ledger_checkpoint_heads
    TO symphony_auditor, symphony_control;
