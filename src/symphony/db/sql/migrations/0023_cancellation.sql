-- 0023 — cancellation: a payment that no attempt can have taken to the rail may be canceled,
-- by its participant or by an operator, in one transaction that the database alone performs.
--
-- The rule (the specification's "Cancellation"): cancelable only while no attempt of the
-- payment can have reached the rail — it was never dispatched, or every earlier attempt ended
-- in a clean refusal (never ambiguous: the lookup flag not set, no lookup mark) — and it is
-- not leased now. Then, in one transaction: a terminal CANCELED ledger row naming who asked and
-- why, the pending row removed, and (by the events trigger of 0016) payment.canceled.
-- Anything else answers NOT_CANCELABLE with the payment's current state and nothing is
-- written; canceling a canceled payment answers ALREADY_CANCELED (idempotent).
--
-- Why it is race-free: the cancel locks the pending row (FOR UPDATE) and decides on the row it
-- locked. A claim takes rows FOR UPDATE SKIP LOCKED, so a claim that meets a cancel in
-- progress skips the item, and a cancel that meets a claim in progress waits for it and then
-- sees its lease: exactly one of the two wins, and a cancel never follows a dispatch that
-- started. A completion or repair needs the lease, which a canceled item never gets again.
--
-- The rules grow with the state, for every writer (the owner too):
-- * I5: CANCELED may be an item's first row or follow a RETRYABLE; nothing follows it
--   (is_legal_transition), and a trigger refuses a CANCELED row for an item that ever needed
--   a lookup (an outbox_lookup_marks row: an ambiguous attempt or a zombie) or that is leased.
-- * I6: CANCELED is terminal: at most one terminal row (DISPATCHED, FAILED or CANCELED).
-- * I7: pending if and only if no terminal row, CANCELED included.
-- * The participant's view shows CANCELED (terminal, with its time and code); the list filter
--   takes it; the audit's lease check (I9) knows a cancellation holds no lease.
-- Entry points, each granted to one role: cancel_payment (the participant, through the API's
-- ingest role, scoped to its own payments), cancel_payment_by_operator (the command line,
-- control, naming the operator), ops_cancel_payment (the operator API, symphony_operator,
-- verifying the acting token like every operator action). The two operator ones record the
-- action in symphony_ops.operator_actions. All three run cancel_outbox_item (owner-only).
-- SQLSTATEs SY082 (no such payment for the caller) and SY083 (a malformed request).

SET LOCAL ROLE symphony_owner;

-- I5: CANCELED first or after RETRYABLE; terminal ---------------------------------------------------

CREATE OR REPLACE FUNCTION symphony.is_legal_transition(
    p_previous symphony.attempt_state,
    p_next symphony.attempt_state
) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_previous IS NULL THEN p_next IN ('DISPATCHING', 'CANCELED')
        WHEN p_previous = 'DISPATCHING'
            THEN p_next IN ('DISPATCHED', 'RETRYABLE', 'FAILED', 'ZOMBIE_REQUEUE')
        WHEN p_previous = 'RETRYABLE' THEN p_next IN ('DISPATCHING', 'CANCELED')
        WHEN p_previous = 'ZOMBIE_REQUEUE' THEN p_next = 'DISPATCHING'
        ELSE false  -- nothing follows DISPATCHED, FAILED or CANCELED
    END
$$;

-- A CANCELED row only for an item no attempt of which may have reached the rail: no lookup
-- mark (the durable trace of an ambiguous attempt or a zombie, 0009) and no live lease.
CREATE FUNCTION symphony.check_cancel_is_clean() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox_lookup_marks m
                WHERE m.outbox_id = NEW.outbox_id AND m.participant_id = NEW.participant_id)
       OR EXISTS (SELECT 1 FROM payment_outbox_pending p
                   WHERE p.outbox_id = NEW.outbox_id AND p.participant_id = NEW.participant_id
                     AND (p.lease_token IS NOT NULL OR p.needs_lookup)) THEN
        RAISE EXCEPTION 'an item that may have reached the rail cannot be canceled'
            USING ERRCODE = 'SY300', CONSTRAINT = 'payment_outbox_attempts_cancel_is_clean';
    END IF;
    RETURN NEW;
END
$$;

-- Fires after payment_outbox_attempts_00_fill_participant (BEFORE triggers run in name
-- order), so the row's participant is known.
CREATE TRIGGER payment_outbox_attempts_cancel_is_clean
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH ROW WHEN (NEW.state = 'CANCELED')
    EXECUTE FUNCTION symphony.check_cancel_is_clean();
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_cancel_is_clean;

-- I6: one terminal row, CANCELED included ---------------------------------------------------------

DROP INDEX symphony.payment_outbox_attempts_one_terminal_idx;
CREATE UNIQUE INDEX payment_outbox_attempts_one_terminal_idx
    ON symphony.payment_outbox_attempts (outbox_id, participant_id)
    WHERE state IN ('DISPATCHED', 'FAILED', 'CANCELED');

-- I7: a CANCELED row leaves the queue too -------------------------------------------------------------

-- Changed from 0010 only in the terminal states.
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
           AND a.state IN ('DISPATCHED', 'FAILED', 'CANCELED'));
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

DROP TRIGGER payment_outbox_attempts_terminal_leaves_pending ON symphony.payment_outbox_attempts;
CREATE CONSTRAINT TRIGGER payment_outbox_attempts_terminal_leaves_pending
    AFTER INSERT ON symphony.payment_outbox_attempts
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.state IN ('DISPATCHED', 'FAILED', 'CANCELED'))
    EXECUTE FUNCTION symphony.check_pending_matches_ledger();
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_terminal_leaves_pending;

-- what the participant sees ---------------------------------------------------------------------------

-- Changed from 0010 only in the terminal states: a canceled payment shows CANCELED, its time
-- as terminal_at and its code (CANCELED_BY_PARTICIPANT, CANCELED_BY_OPERATOR).
CREATE OR REPLACE VIEW symphony.participant_payment_view AS
SELECT r.participant_id,
       r.sequence_id,
       r.outbox_id,
       r.instruction_id,
       r.idempotency_key,
       r.rail_type,
       r.payload,
       CASE
           WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.state::text
           WHEN p.lease_token IS NOT NULL THEN 'DISPATCHING'
           WHEN l.state = 'RETRYABLE' THEN 'RETRYABLE'
           ELSE 'PENDING'
       END AS state,
       coalesce(p.attempt_count,
                (SELECT count(*) FROM symphony.payment_outbox_attempts d
                  WHERE d.outbox_id = r.outbox_id AND d.participant_id = r.participant_id
                    AND d.state = 'DISPATCHING'))::integer
           AS attempt_count,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN NULL ELSE p.next_attempt_at END
           AS next_attempt_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.error_code
            ELSE p.last_error_code END AS last_error_code,
       r.created_at,
       coalesce(l.recorded_at, r.created_at) AS updated_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.recorded_at END AS terminal_at
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

-- Changed from 0007 only in taking CANCELED as a state filter.
CREATE OR REPLACE FUNCTION symphony.participant_payments(
    p_participant_id text,
    p_state          text DEFAULT NULL,
    p_after          uuid DEFAULT NULL,
    p_limit          integer DEFAULT 50
) RETURNS TABLE (
    outbox_id       uuid,
    instruction_id  text,
    idempotency_key text,
    rail_type       text,
    payload         jsonb,
    state           text,
    attempt_count   integer,
    next_attempt_at timestamptz,
    last_error_code text,
    created_at      timestamptz,
    updated_at      timestamptz,
    terminal_at     timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_before bigint := 9223372036854775807;
    v_low    bigint;
    v_seen   integer;
    v_got    integer;
    v_found  integer := 0;
    -- Items looked at per step. The state is derived (ledger, lease), so it cannot be
    -- indexed: the walk goes through the participant's items in windows of the
    -- (participant_id, sequence_id) index, each a bounded range scan, until the page is full.
    v_window constant integer := 200;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'limit must be between 1 and 200'
            USING ERRCODE = 'SY021', CONSTRAINT = 'participant_payments_limit';
    END IF;
    IF p_state IS NOT NULL
       AND p_state NOT IN ('PENDING', 'DISPATCHING', 'RETRYABLE', 'DISPATCHED', 'FAILED',
                           'CANCELED') THEN
        RAISE EXCEPTION 'state must be PENDING, DISPATCHING, RETRYABLE, DISPATCHED, FAILED or '
                        'CANCELED'
            USING ERRCODE = 'SY032', CONSTRAINT = 'participant_payments_state';
    END IF;
    IF p_after IS NOT NULL THEN
        SELECT r.sequence_id INTO v_before
          FROM payment_instruction_registry r
         WHERE r.outbox_id = p_after AND r.participant_id = p_participant_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the cursor is not one of the caller''s payments'
                USING ERRCODE = 'SY031', CONSTRAINT = 'participant_payments_cursor';
        END IF;
    END IF;
    LOOP
        SELECT min(w.sequence_id), count(*) INTO v_low, v_seen
          FROM (SELECT r.sequence_id
                  FROM payment_instruction_registry r
                 WHERE r.participant_id = p_participant_id
                   AND r.sequence_id < v_before
                 ORDER BY r.sequence_id DESC
                 LIMIT v_window) w;
        EXIT WHEN v_seen = 0;
        RETURN QUERY
        SELECT v.outbox_id, v.instruction_id, v.idempotency_key, v.rail_type, v.payload,
               v.state, v.attempt_count, v.next_attempt_at, v.last_error_code, v.created_at,
               v.updated_at, v.terminal_at
          FROM participant_payment_view v
         WHERE v.participant_id = p_participant_id
           AND v.sequence_id < v_before
           AND v.sequence_id >= v_low
           AND (p_state IS NULL OR v.state = p_state)
         ORDER BY v.sequence_id DESC
         LIMIT p_limit - v_found;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_found := v_found + v_got;
        EXIT WHEN v_found >= p_limit OR v_seen < v_window;
        v_before := v_low;
    END LOOP;
END
$$;

-- I9 in the audit: a cancellation is no dispatch outcome and holds no lease. Changed from 0009
-- only there.
CREATE OR REPLACE FUNCTION symphony.audit_lease_violations(
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
               -- The item's newest row, from the same window (no second sort).
               (lead(a.attempt_no) OVER w IS NULL) AS is_last
          FROM payment_outbox_attempts a
         WHERE p_since IS NULL OR a.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s)
        WINDOW w AS (PARTITION BY a.outbox_id ORDER BY a.attempt_no)
    ),
    violations AS (
        SELECT x.outbox_id, x.attempt_no,
               CASE
                   WHEN x.state = 'DISPATCHING' AND x.lease_token IS NULL
                       THEN 'DISPATCHING_WITHOUT_LEASE'
                   -- A cancellation is no outcome of a dispatch: it holds no lease.
                   WHEN x.state = 'CANCELED' AND x.lease_token IS NOT NULL
                       THEN 'CANCELED_WITH_LEASE'
                   WHEN x.state NOT IN ('DISPATCHING', 'CANCELED')
                        AND (x.previous_state IS DISTINCT FROM 'DISPATCHING'
                             OR x.previous_attempt_no <> x.attempt_no - 1)
                       THEN 'NO_PRECEDING_DISPATCHING'
                   WHEN x.state NOT IN ('DISPATCHING', 'CANCELED')
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
          LEFT JOIN rows_in_scope x ON x.outbox_id = p.outbox_id AND x.is_last
         WHERE p_since IS NULL OR p.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s)
    )
    SELECT v.outbox_id, v.attempt_no, v.problem, count(*) OVER () AS total
      FROM violations v
     WHERE v.problem IS NOT NULL
     ORDER BY v.outbox_id, v.attempt_no
     LIMIT p_limit
$$;

-- cancel ---------------------------------------------------------------------------------------------

-- The one cancellation: decide on the locked pending row, append CANCELED, remove the row.
-- `p_participant_id` NULL: any participant's payment (an operator). Owner-only; the entry
-- points below validate who asks and why.
CREATE FUNCTION symphony.cancel_outbox_item(
    p_outbox_id      uuid,
    p_participant_id text,
    p_canceled_by    text,
    p_error_code     text,
    p_reason         text
) RETURNS TABLE (
    outbox_id      uuid,
    participant_id text,
    result         text,
    state          text,
    refusal        text,
    attempt_no     integer,
    canceled_at    timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_pid     text;
    v_item    payment_outbox_pending%ROWTYPE;
    v_last    record;
    v_state   text;
    v_refusal text;
    v_at      timestamptz;
BEGIN
    SELECT r.participant_id INTO v_pid
      FROM payment_instruction_registry r
     WHERE r.outbox_id = p_outbox_id
       AND (p_participant_id IS NULL OR r.participant_id = p_participant_id);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such payment'
            USING ERRCODE = 'SY082', CONSTRAINT = 'cancel_payment_known';
    END IF;

    -- The lock a claim skips (SKIP LOCKED) and waits behind nothing else.
    SELECT * INTO v_item
      FROM payment_outbox_pending p
     WHERE p.outbox_id = p_outbox_id AND p.participant_id = v_pid
       FOR UPDATE;
    IF NOT FOUND THEN
        SELECT a.state::text AS state, a.attempt_no, a.recorded_at INTO v_last
          FROM payment_outbox_attempts a
         WHERE a.outbox_id = p_outbox_id AND a.participant_id = v_pid
         ORDER BY a.attempt_no DESC
         LIMIT 1;
        IF v_last.state = 'CANCELED' THEN
            RETURN QUERY SELECT p_outbox_id, v_pid, 'ALREADY_CANCELED'::text, 'CANCELED'::text,
                                NULL::text, v_last.attempt_no::integer, v_last.recorded_at;
        ELSE
            RETURN QUERY SELECT p_outbox_id, v_pid, 'NOT_CANCELABLE'::text, v_last.state,
                                'TERMINAL'::text, v_last.attempt_no::integer, NULL::timestamptz;
        END IF;
        RETURN;
    END IF;

    v_refusal := CASE
        WHEN v_item.lease_token IS NOT NULL THEN 'DISPATCHING'
        WHEN v_item.review_reason IS NOT NULL THEN 'UNDER_REVIEW'
        WHEN v_item.needs_lookup OR EXISTS (
                 SELECT 1 FROM outbox_lookup_marks m
                  WHERE m.outbox_id = p_outbox_id AND m.participant_id = v_pid)
            THEN 'MAY_HAVE_REACHED_RAIL'
    END;
    IF v_refusal IS NOT NULL THEN
        SELECT v.state INTO v_state FROM participant_payment_view v
         WHERE v.outbox_id = p_outbox_id AND v.participant_id = v_pid;
        RETURN QUERY SELECT p_outbox_id, v_pid, 'NOT_CANCELABLE'::text, v_state, v_refusal,
                            v_item.last_attempt_no, NULL::timestamptz;
        RETURN;
    END IF;

    DELETE FROM payment_outbox_pending p
     WHERE p.outbox_id = p_outbox_id AND p.participant_id = v_pid;
    INSERT INTO payment_outbox_attempts AS a
        (outbox_id, participant_id, attempt_no, state, worker_id, error_code, error_detail)
    VALUES (p_outbox_id, v_pid, v_item.last_attempt_no + 1, 'CANCELED', p_canceled_by,
            p_error_code, left(p_reason, 1000))
    RETURNING a.recorded_at INTO v_at;
    RETURN QUERY SELECT p_outbox_id, v_pid, 'CANCELED'::text, 'CANCELED'::text, NULL::text,
                        v_item.last_attempt_no + 1, v_at;
END
$$;

-- The participant's own cancel (the API, as symphony_ingest): only its own payments; another
-- participant's id is SY082 exactly like an unknown one. The reason is optional.
CREATE FUNCTION symphony.cancel_payment(
    p_participant_id text,
    p_outbox_id      uuid,
    p_reason         text DEFAULT NULL
) RETURNS TABLE (
    outbox_id   uuid,
    result      text,
    state       text,
    refusal     text,
    attempt_no  integer,
    canceled_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_participant_id IS NULL OR p_outbox_id IS NULL THEN
        RAISE EXCEPTION 'a cancel names the participant and the payment'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_request';
    END IF;
    IF p_reason IS NOT NULL AND (char_length(btrim(p_reason)) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]') THEN
        RAISE EXCEPTION 'a cancel reason is 1-500 printable characters'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_reason';
    END IF;
    RETURN QUERY
    SELECT c.outbox_id, c.result, c.state, c.refusal, c.attempt_no, c.canceled_at
      FROM cancel_outbox_item(p_outbox_id, p_participant_id, 'participant:' || p_participant_id,
                              'CANCELED_BY_PARTICIPANT',
                              coalesce(p_reason, 'canceled by the participant')) c;
END
$$;

-- An operator's cancel from the command line (control): any participant's payment (a revoked
-- participant's accepted payments go on unless an operator cancels them), naming the operator,
-- with a reason; recorded in operator_actions.
CREATE FUNCTION symphony.cancel_payment_by_operator(
    p_outbox_id   uuid,
    p_canceled_by text,
    p_reason      text
) RETURNS TABLE (
    outbox_id      uuid,
    participant_id text,
    result         text,
    state          text,
    refusal        text,
    attempt_no     integer,
    canceled_at    timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_result record;
BEGIN
    IF p_outbox_id IS NULL OR p_canceled_by IS NULL
       OR p_canceled_by !~ '^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$' THEN
        RAISE EXCEPTION 'canceled_by names the operator: 1-64 letters, digits, ".", "_", "@", '
                        '":" or "-"'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_canceled_by';
    END IF;
    PERFORM check_operator_reason(p_reason);
    SELECT * INTO v_result
      FROM cancel_outbox_item(p_outbox_id, NULL, 'operator:' || p_canceled_by,
                              'CANCELED_BY_OPERATOR', p_reason) c;
    INSERT INTO symphony_ops.operator_actions
        (action, outbox_id, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('CANCEL_PAYMENT', p_outbox_id, v_result.participant_id, p_outbox_id::text, NULL,
            p_canceled_by, p_reason,
            jsonb_build_object('result', v_result.result, 'state', v_result.state,
                               'refusal', v_result.refusal));
    RETURN QUERY SELECT v_result.outbox_id, v_result.participant_id, v_result.result,
                        v_result.state, v_result.refusal, v_result.attempt_no,
                        v_result.canceled_at;
END
$$;

-- An operator's cancel through the API (symphony_operator): the acting token verified like
-- every operator action (live, OPERATOR kind and scope), named in the ledger row
-- ('operator:token:<id>') and in operator_actions with its label.
CREATE FUNCTION symphony.ops_cancel_payment(
    p_token_id    uuid,
    p_secret_hash bytea,
    p_outbox_id   uuid,
    p_reason      text
) RETURNS TABLE (
    action_id      bigint,
    outbox_id      uuid,
    participant_id text,
    result         text,
    state          text,
    refusal        text,
    attempt_no     integer,
    canceled_at    timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_actor     record;
    v_result    record;
    v_action_id bigint;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    PERFORM check_operator_reason(p_reason);
    IF p_outbox_id IS NULL THEN
        RAISE EXCEPTION 'a cancel names the payment'
            USING ERRCODE = 'SY083', CONSTRAINT = 'cancel_payment_request';
    END IF;
    SELECT * INTO v_result
      FROM cancel_outbox_item(p_outbox_id, NULL, 'operator:token:' || v_actor.token_id::text,
                              'CANCELED_BY_OPERATOR', p_reason) c;
    INSERT INTO symphony_ops.operator_actions
        (action, outbox_id, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('CANCEL_PAYMENT', p_outbox_id, v_result.participant_id, p_outbox_id::text,
            v_actor.token_id, v_actor.label, p_reason,
            jsonb_build_object('result', v_result.result, 'state', v_result.state,
                               'refusal', v_result.refusal))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, v_result.outbox_id, v_result.participant_id,
                        v_result.result, v_result.state, v_result.refusal, v_result.attempt_no,
                        v_result.canceled_at;
END
$$;

RESET ROLE;

-- grants ---------------------------------------------------------------------------------------------

REVOKE ALL ON FUNCTION
    symphony.check_cancel_is_clean(),
    symphony.cancel_outbox_item(uuid, text, text, text, text),
    symphony.cancel_payment(text, uuid, text),
    symphony.cancel_payment_by_operator(uuid, text, text),
    symphony.ops_cancel_payment(uuid, bytea, uuid, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.cancel_payment(text, uuid, text) TO symphony_ingest;
GRANT EXECUTE ON FUNCTION symphony.cancel_payment_by_operator(uuid, text, text)
    TO symphony_control;
GRANT EXECUTE ON FUNCTION symphony.ops_cancel_payment(uuid, bytea, uuid, text)
    TO symphony_operator;
