-- 0003 — the rules the database enforces on its own, whoever writes.
--
-- Why triggers: privileges keep runtime roles away from the tables, but the owner (and a
-- superuser acting as it) can still write. The history must hold even then:
-- * I3 the ledger and the idempotency registry are append-only, for the owner too (P0001);
-- * I4 attempt_no is dense per item; attempt_count and last_attempt_no never decrease;
-- * I5 only legal transitions are appended;
-- * I7 an item is pending if and only if its ledger has no terminal row (checked at commit,
--   since a completion deletes the pending row and appends the terminal row in one go);
-- * I8 a participant's sequence only moves forward.
-- Errors raised here carry a named CONSTRAINT so the application maps them without reading
-- message text. SQLSTATEs of class SY are this product's own.

SET LOCAL ROLE symphony_owner;

-- I3: append-only tables ----------------------------------------------------------------------

CREATE FUNCTION symphony.refuse_history_rewrite() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'history is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'P0001', CONSTRAINT = TG_TABLE_NAME || '_append_only';
END
$$;

CREATE TRIGGER payment_outbox_attempts_append_only
    BEFORE UPDATE OR DELETE ON symphony.payment_outbox_attempts
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();

CREATE TRIGGER payment_outbox_attempts_no_truncate
    BEFORE TRUNCATE ON symphony.payment_outbox_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();

CREATE TRIGGER payment_instruction_registry_append_only
    BEFORE UPDATE OR DELETE ON symphony.payment_instruction_registry
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();

CREATE TRIGGER payment_instruction_registry_no_truncate
    BEFORE TRUNCATE ON symphony.payment_instruction_registry
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();

-- I4 + I5: every appended row continues its item's history legally ----------------------------

CREATE FUNCTION symphony.is_legal_transition(
    p_previous symphony.attempt_state,
    p_next symphony.attempt_state
) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_previous IS NULL THEN p_next = 'DISPATCHING'
        WHEN p_previous = 'DISPATCHING'
            THEN p_next IN ('DISPATCHED', 'RETRYABLE', 'FAILED', 'ZOMBIE_REQUEUE')
        WHEN p_previous IN ('RETRYABLE', 'ZOMBIE_REQUEUE') THEN p_next = 'DISPATCHING'
        ELSE false  -- nothing follows DISPATCHED or FAILED
    END
$$;

CREATE FUNCTION symphony.check_attempt_sequence() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_prev_no    integer;
    v_prev_state attempt_state;
BEGIN
    -- Reads one index entry (outbox_id, attempt_no DESC): cost independent of ledger size.
    SELECT a.attempt_no, a.state
      INTO v_prev_no, v_prev_state
      FROM payment_outbox_attempts a
     WHERE a.outbox_id = NEW.outbox_id
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

CREATE TRIGGER payment_outbox_attempts_legal_transition
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH ROW EXECUTE FUNCTION symphony.check_attempt_sequence();

CREATE FUNCTION symphony.check_pending_monotonic() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.outbox_id <> OLD.outbox_id
       OR NEW.participant_id <> OLD.participant_id
       OR NEW.sequence_id <> OLD.sequence_id THEN
        RAISE EXCEPTION 'a pending item keeps its identity'
            USING ERRCODE = 'SY303', CONSTRAINT = 'payment_outbox_pending_identity';
    END IF;
    IF NEW.attempt_count < OLD.attempt_count OR NEW.last_attempt_no < OLD.last_attempt_no THEN
        RAISE EXCEPTION 'attempt counters never decrease'
            USING ERRCODE = 'SY301', CONSTRAINT = 'payment_outbox_pending_attempts_monotonic';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER payment_outbox_pending_monotonic
    BEFORE UPDATE ON symphony.payment_outbox_pending
    FOR EACH ROW EXECUTE FUNCTION symphony.check_pending_monotonic();

-- I7: pending if and only if no terminal row, checked at commit ------------------------------

CREATE FUNCTION symphony.check_pending_matches_ledger() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_outbox_id uuid;
    v_terminal  boolean;
    v_pending   boolean;
BEGIN
    v_outbox_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.outbox_id ELSE NEW.outbox_id END;
    v_terminal := EXISTS (
        SELECT 1 FROM payment_outbox_attempts a
         WHERE a.outbox_id = v_outbox_id AND a.state IN ('DISPATCHED', 'FAILED'));
    v_pending := EXISTS (
        SELECT 1 FROM payment_outbox_pending p WHERE p.outbox_id = v_outbox_id);
    IF v_terminal = v_pending THEN
        RAISE EXCEPTION 'an item is pending if and only if it has no terminal ledger row'
            USING ERRCODE = 'SY302', CONSTRAINT = 'payment_outbox_pending_matches_ledger',
                  DETAIL = format('outbox item %s: pending=%s terminal=%s',
                                  v_outbox_id, v_pending, v_terminal);
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER payment_outbox_attempts_terminal_leaves_pending
    AFTER INSERT ON symphony.payment_outbox_attempts
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.state IN ('DISPATCHED', 'FAILED'))
    EXECUTE FUNCTION symphony.check_pending_matches_ledger();

CREATE CONSTRAINT TRIGGER payment_outbox_pending_insert_matches_ledger
    AFTER INSERT ON symphony.payment_outbox_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION symphony.check_pending_matches_ledger();

CREATE CONSTRAINT TRIGGER payment_outbox_pending_delete_matches_ledger
    AFTER DELETE ON symphony.payment_outbox_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION symphony.check_pending_matches_ledger();

-- TRUNCATE would drop live items without a terminal row; no role may do it.
CREATE FUNCTION symphony.refuse_pending_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'live outbox items cannot be truncated'
        USING ERRCODE = 'P0001', CONSTRAINT = 'payment_outbox_pending_no_truncate';
END
$$;

CREATE TRIGGER payment_outbox_pending_no_truncate
    BEFORE TRUNCATE ON symphony.payment_outbox_pending
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_pending_truncate();

-- I8: sequences only move forward -------------------------------------------------------------

CREATE FUNCTION symphony.check_sequence_forward() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'participant sequences are never removed'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_outbox_sequences_forward_only';
    END IF;
    IF NEW.participant_id <> OLD.participant_id
       OR NEW.last_sequence_id <= OLD.last_sequence_id THEN
        RAISE EXCEPTION 'participant sequences only move forward'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_outbox_sequences_forward_only';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER participant_outbox_sequences_forward_only
    BEFORE UPDATE OR DELETE ON symphony.participant_outbox_sequences
    FOR EACH ROW EXECUTE FUNCTION symphony.check_sequence_forward();

CREATE TRIGGER participant_outbox_sequences_no_truncate
    BEFORE TRUNCATE ON symphony.participant_outbox_sequences
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.check_sequence_forward();

-- New pending work wakes the workers: one NOTIFY per statement, not per row, and none for a
-- statement that inserted nothing (an idempotent replay).
CREATE FUNCTION symphony.notify_pending_work() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows) THEN
        PERFORM pg_notify('symphony_outbox_pending', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER payment_outbox_pending_notify
    AFTER INSERT ON symphony.payment_outbox_pending
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.notify_pending_work();

-- The rules hold in every session: ENABLE ALWAYS keeps them firing even where
-- session_replication_role = replica would skip ordinary triggers.
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_append_only,
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_no_truncate,
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_legal_transition,
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_terminal_leaves_pending;
ALTER TABLE symphony.payment_instruction_registry
    ENABLE ALWAYS TRIGGER payment_instruction_registry_append_only,
    ENABLE ALWAYS TRIGGER payment_instruction_registry_no_truncate;
ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_monotonic,
    ENABLE ALWAYS TRIGGER payment_outbox_pending_insert_matches_ledger,
    ENABLE ALWAYS TRIGGER payment_outbox_pending_delete_matches_ledger,
    ENABLE ALWAYS TRIGGER payment_outbox_pending_no_truncate;
ALTER TABLE symphony.participant_outbox_sequences
    ENABLE ALWAYS TRIGGER participant_outbox_sequences_forward_only,
    ENABLE ALWAYS TRIGGER participant_outbox_sequences_no_truncate;
