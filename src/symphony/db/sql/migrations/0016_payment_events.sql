-- 0013 — payment events: an outbox of the participant's own, written by the database.
--
-- Why:
-- * A participant must be told what happened to its payments instead of polling. Each change
--   it cares about becomes a row of payment_events in the same transaction as the row that
--   causes it, written by this schema's triggers (never by the application afterwards), so an
--   event exists if and only if its cause committed:
--     payment.created       the item's pending row is inserted (enqueue, single or batch)
--     payment.dispatched    a DISPATCHED ledger row (a completion, a review resolution)
--     payment.failed        a FAILED ledger row (likewise)
--     payment.canceled      a CANCELED ledger row (the cancellation's migration adds the state)
--     payment.under_review  a RETRYABLE ledger row after which the item is under review: the
--                           only place an item enters review is the completion that appends
--                           that row and sets review_reason (0006); an item under review is
--                           never claimed, so no later RETRYABLE row can find it there.
-- * Numbered per participant in commit order, without gaps: participant_event_sequences holds
--   the participant's last number, and the row stays locked until the writer commits, so event
--   N+1 is numbered only after N committed (or rolled back and was numbered again). A reader's
--   cursor `event_seq > last_seen` therefore never skips an event that commits later. Other
--   participants are not serialised: each has its own counter row. Enqueue already holds the
--   participant's sequence row to commit (I8), so enqueues gain no new wait.
-- * Deadlock-free: the triggers are statement-level (transition tables) and lock the counters
--   of a statement in one global order (participant_id, collation "C"), whatever order the
--   statement wrote its rows in; every statement of every writer that appends events locks in
--   that order, so two completion batches over the same participants never wait on each other
--   in a cycle.
-- * The payload is the payment as GET /v1/payments/{id} shows it at that moment: the row of
--   participant_payment_view (without the participant's id and sequence number, which the read
--   functions do not return either) with its attempts from participant_attempt_view, the view
--   participant_payment_attempts now reads too. One shape, used by the API and the events.
-- * Keyed by participant (docs/scale-out.md): primary key (participant_id, event_seq); the
--   event id is unique with the participant (globally by gen_random_uuid(), as outbox_id is).
-- * Append-only like the ledger: UPDATE/DELETE/TRUNCATE refused for every role, the owner too.
-- * Readable by the participant only through participant_events() (readonly: the API);
--   the auditor reads the table for `audit verify`.

SET LOCAL ROLE symphony_owner;

-- tables --------------------------------------------------------------------------------------

CREATE TABLE symphony.participant_event_sequences (
    participant_id text        NOT NULL,
    last_event_seq bigint      NOT NULL,
    CONSTRAINT participant_event_sequences_pkey PRIMARY KEY (participant_id),
    CONSTRAINT participant_event_sequences_participant_fkey
        FOREIGN KEY (participant_id) REFERENCES symphony.participants (participant_id),
    CONSTRAINT participant_event_sequences_positive CHECK (last_event_seq >= 1)
);

CREATE TABLE symphony.payment_events (
    participant_id text        NOT NULL,
    event_seq      bigint      NOT NULL,
    event_id       uuid        NOT NULL DEFAULT gen_random_uuid(),
    event_type     text        NOT NULL,
    outbox_id      uuid        NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT payment_events_pkey PRIMARY KEY (participant_id, event_seq),
    CONSTRAINT payment_events_event_id_key UNIQUE (event_id, participant_id),
    CONSTRAINT payment_events_outbox_id_fkey
        FOREIGN KEY (outbox_id, participant_id)
        REFERENCES symphony.payment_instruction_registry (outbox_id, participant_id),
    CONSTRAINT payment_events_event_type_known CHECK (event_type IN (
        'payment.created', 'payment.dispatched', 'payment.failed', 'payment.canceled',
        'payment.under_review')),
    CONSTRAINT payment_events_event_seq_positive CHECK (event_seq >= 1),
    CONSTRAINT payment_events_payload_object CHECK (jsonb_typeof(payload) = 'object')
);

-- GET /v1/events?type=: one type's events of a participant, in order, without walking the
-- others.
CREATE INDEX payment_events_type_idx
    ON symphony.payment_events (participant_id, event_type, event_seq);

CREATE TRIGGER payment_events_append_only
    BEFORE UPDATE OR DELETE ON symphony.payment_events
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();
CREATE TRIGGER payment_events_no_truncate
    BEFORE TRUNCATE ON symphony.payment_events
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();

-- The counter only moves forward and is never removed (a lower number would be handed out
-- twice).
CREATE FUNCTION symphony.check_event_sequence_forward() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'participant event sequences are never removed'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_event_sequences_forward_only';
    END IF;
    IF NEW.participant_id <> OLD.participant_id
       OR NEW.last_event_seq <= OLD.last_event_seq THEN
        RAISE EXCEPTION 'participant event sequences only move forward'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_event_sequences_forward_only';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER participant_event_sequences_forward_only
    BEFORE UPDATE OR DELETE ON symphony.participant_event_sequences
    FOR EACH ROW EXECUTE FUNCTION symphony.check_event_sequence_forward();
CREATE TRIGGER participant_event_sequences_no_truncate
    BEFORE TRUNCATE ON symphony.participant_event_sequences
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.check_event_sequence_forward();

ALTER TABLE symphony.payment_events
    ENABLE ALWAYS TRIGGER payment_events_append_only,
    ENABLE ALWAYS TRIGGER payment_events_no_truncate;
ALTER TABLE symphony.participant_event_sequences
    ENABLE ALWAYS TRIGGER participant_event_sequences_forward_only,
    ENABLE ALWAYS TRIGGER participant_event_sequences_no_truncate;

-- the payment as its participant sees it ---------------------------------------------------------

-- One ledger row as the participant sees it (no worker id, lease or login; a zombie requeue's
-- detail, which names the worker, replaced by a fixed text): the shape of
-- participant_payment_attempts since 0007, now a view both it and the events read.
CREATE VIEW symphony.participant_attempt_view AS
SELECT a.participant_id,
       a.outbox_id,
       a.attempt_no,
       a.state::text AS state,
       a.error_code,
       CASE WHEN a.state = 'ZOMBIE_REQUEUE'
            THEN 'the dispatch did not report back in time; the payment was requeued'
            ELSE a.error_detail END AS error_detail,
       a.rail_transaction_id,
       a.recorded_at
  FROM symphony.payment_outbox_attempts a;

-- Changed from 0010 only in reading the view above.
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
    SELECT a.attempt_no, a.state, a.error_code, a.error_detail, a.rail_transaction_id,
           a.recorded_at
      FROM payment_instruction_registry r
      JOIN participant_attempt_view a
        ON a.outbox_id = r.outbox_id AND a.participant_id = r.participant_id
     WHERE r.outbox_id = p_outbox_id
       AND r.participant_id = p_participant_id
       AND a.participant_id = p_participant_id
     ORDER BY a.attempt_no
$$;

-- The event body: what participant_payment and participant_payment_attempts return for the
-- item, as one JSON object (the attempts under "attempts", oldest first). A plain SQL table
-- function without SET or SECURITY DEFINER so the planner inlines it into the trigger's
-- statement (one set-based insert per statement, no function call per event); owner-only.
CREATE FUNCTION symphony.payment_event_payload(
    p_participant_id text,
    p_outbox_id      uuid
) RETURNS TABLE (payload jsonb)
LANGUAGE sql
STABLE
AS $$
    SELECT (to_jsonb(v) - 'participant_id' - 'sequence_id')
           || jsonb_build_object('attempts', coalesce(
                  (SELECT jsonb_agg(to_jsonb(a) - 'participant_id' - 'outbox_id'
                                    ORDER BY a.attempt_no)
                     FROM symphony.participant_attempt_view a
                    WHERE a.outbox_id = v.outbox_id
                      AND a.participant_id = v.participant_id),
                  '[]'::jsonb))
      FROM symphony.participant_payment_view v
     WHERE v.outbox_id = p_outbox_id
       AND v.participant_id = p_participant_id
$$;

-- appending events ------------------------------------------------------------------------------

-- Numbers and appends the given events (element i: participant, item, type), in the arrays'
-- order within each participant. The counters are locked in participant order (see the
-- header); each stays locked until the caller's transaction ends. Owner-only: the triggers
-- below are its only callers.
CREATE FUNCTION symphony.append_payment_events(
    p_participant_ids text[],
    p_outbox_ids      uuid[],
    p_event_types     text[]
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_pid   text;
    v_count integer;
    v_last  bigint;
    v_pids  text[] := '{}';
    v_lasts bigint[] := '{}';
BEGIN
    IF coalesce(cardinality(p_participant_ids), 0) = 0 THEN
        RETURN 0;
    END IF;
    FOR v_pid, v_count IN
        SELECT u.pid, count(*)::integer
          FROM unnest(p_participant_ids) AS u(pid)
         GROUP BY u.pid
         ORDER BY u.pid COLLATE "C"
    LOOP
        INSERT INTO participant_event_sequences AS s (participant_id, last_event_seq)
        VALUES (v_pid, v_count)
        ON CONFLICT ON CONSTRAINT participant_event_sequences_pkey
        DO UPDATE SET last_event_seq = s.last_event_seq + v_count
        RETURNING s.last_event_seq INTO v_last;
        v_pids := v_pids || v_pid;
        v_lasts := v_lasts || v_last;
    END LOOP;

    INSERT INTO payment_events (participant_id, event_seq, event_type, outbox_id, payload)
    SELECT e.pid,
           c.last_seq - count(*) OVER (PARTITION BY e.pid)
               + row_number() OVER (PARTITION BY e.pid ORDER BY e.ord),
           e.typ, e.oid, b.payload
      FROM unnest(p_participant_ids, p_outbox_ids, p_event_types) WITH ORDINALITY
           AS e(pid, oid, typ, ord)
      JOIN unnest(v_pids, v_lasts) AS c(pid, last_seq) ON c.pid = e.pid
      CROSS JOIN LATERAL payment_event_payload(e.pid, e.oid) b;
    RETURN cardinality(p_participant_ids);
END
$$;

-- payment.created: after the pending rows of a statement are in (the payment then shows as
-- PENDING with its first next_attempt_at, as GET shows it right after the POST).
CREATE FUNCTION symphony.emit_created_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_pids  text[];
    v_ids   uuid[];
    v_types text[];
BEGIN
    SELECT array_agg(n.participant_id), array_agg(n.outbox_id),
           array_agg('payment.created'::text)
      INTO v_pids, v_ids, v_types
      FROM (SELECT n.participant_id, n.outbox_id FROM new_rows n
             ORDER BY n.participant_id COLLATE "C", n.sequence_id) n;
    PERFORM append_payment_events(v_pids, v_ids, v_types);
    RETURN NULL;
END
$$;

-- payment.dispatched / failed / canceled / under_review: after a statement appended ledger
-- rows. Most statements (claims) append only DISPATCHING rows and end after one pass over
-- the transition table.
CREATE FUNCTION symphony.emit_ledger_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_pids  text[];
    v_ids   uuid[];
    v_types text[];
BEGIN
    SELECT array_agg(e.participant_id), array_agg(e.outbox_id), array_agg(e.event_type)
      INTO v_pids, v_ids, v_types
      FROM (SELECT n.participant_id, n.outbox_id,
                   CASE n.state::text
                       WHEN 'DISPATCHED' THEN 'payment.dispatched'
                       WHEN 'FAILED' THEN 'payment.failed'
                       WHEN 'CANCELED' THEN 'payment.canceled'
                       ELSE 'payment.under_review'
                   END AS event_type,
                   n.attempt_id
              FROM new_rows n
             WHERE n.state::text IN ('DISPATCHED', 'FAILED', 'CANCELED')
                -- A scalar subquery with LIMIT stays a per-row probe of the pending row's
                -- primary key (never a join over the queue), made for RETRYABLE rows only.
                OR (n.state = 'RETRYABLE' AND coalesce(
                        (SELECT p.review_reason IS NOT NULL
                           FROM payment_outbox_pending p
                          WHERE p.outbox_id = n.outbox_id
                            AND p.participant_id = n.participant_id
                          LIMIT 1), false))
             ORDER BY n.participant_id COLLATE "C", n.attempt_id) e;
    PERFORM append_payment_events(v_pids, v_ids, v_types);
    RETURN NULL;
END
$$;

CREATE TRIGGER payment_outbox_pending_emit_created
    AFTER INSERT ON symphony.payment_outbox_pending
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.emit_created_events();
CREATE TRIGGER payment_outbox_attempts_emit_events
    AFTER INSERT ON symphony.payment_outbox_attempts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.emit_ledger_events();
ALTER TABLE symphony.payment_outbox_pending
    ENABLE ALWAYS TRIGGER payment_outbox_pending_emit_created;
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_emit_events;

-- reading events: the participant's own, by cursor ------------------------------------------------

-- The participant's events after `p_after` (an event_seq; 0 for the first page), oldest
-- first, at most `p_limit`, optionally of one type. Each branch is one range scan of an index
-- on (participant_id, ...): a page costs its own rows.
CREATE FUNCTION symphony.participant_events(
    p_participant_id text,
    p_after          bigint DEFAULT 0,
    p_limit          integer DEFAULT 50,
    p_event_type     text DEFAULT NULL
) RETURNS TABLE (
    event_seq  bigint,
    event_id   uuid,
    event_type text,
    outbox_id  uuid,
    payload    jsonb,
    created_at timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'limit must be between 1 and 200'
            USING ERRCODE = 'SY021', CONSTRAINT = 'participant_events_limit';
    END IF;
    IF p_after IS NULL OR p_after < 0 THEN
        RAISE EXCEPTION 'after must be an event sequence number, 0 or more'
            USING ERRCODE = 'SY080', CONSTRAINT = 'participant_events_cursor';
    END IF;
    IF p_event_type IS NULL THEN
        RETURN QUERY
        SELECT e.event_seq, e.event_id, e.event_type, e.outbox_id, e.payload, e.created_at
          FROM payment_events e
         WHERE e.participant_id = p_participant_id
           AND e.event_seq > p_after
         ORDER BY e.event_seq
         LIMIT p_limit;
    ELSIF p_event_type IN ('payment.created', 'payment.dispatched', 'payment.failed',
                           'payment.canceled', 'payment.under_review') THEN
        RETURN QUERY
        SELECT e.event_seq, e.event_id, e.event_type, e.outbox_id, e.payload, e.created_at
          FROM payment_events e
         WHERE e.participant_id = p_participant_id
           AND e.event_type = p_event_type
           AND e.event_seq > p_after
         ORDER BY e.event_seq
         LIMIT p_limit;
    ELSE
        RAISE EXCEPTION 'type must be payment.created, payment.dispatched, payment.failed, '
                        'payment.canceled or payment.under_review'
            USING ERRCODE = 'SY081', CONSTRAINT = 'participant_events_type';
    END IF;
END
$$;

-- backfill ----------------------------------------------------------------------------------------

-- Items written before this migration get their events too, so `audit verify` (E1) holds on
-- an upgraded database: per participant, in the order their causes happened (registration,
-- terminal row, review decision or current review), each carrying the payment as it is now
-- (the moment these events are written; the history is in its `attempts`). A review that
-- was resolved is dated by its decision, just before the decision's own outcome.
INSERT INTO symphony.payment_events
    (participant_id, event_seq, event_type, outbox_id, payload, created_at)
SELECT c.participant_id,
       row_number() OVER (PARTITION BY c.participant_id ORDER BY c.at, c.k, c.outbox_id),
       c.event_type, c.outbox_id, b.payload, c.at
  FROM (SELECT r.participant_id, r.outbox_id, 'payment.created' AS event_type,
               r.created_at AS at, 0 AS k
          FROM symphony.payment_instruction_registry r
        UNION ALL
        SELECT a.participant_id, a.outbox_id,
               CASE a.state WHEN 'DISPATCHED' THEN 'payment.dispatched'
                            ELSE 'payment.failed' END,
               a.recorded_at, 2
          FROM symphony.payment_outbox_attempts a
         WHERE a.state IN ('DISPATCHED', 'FAILED')
        UNION ALL
        SELECT d.participant_id, d.outbox_id, 'payment.under_review', d.decided_at, 1
          FROM symphony.outbox_review_decisions d
        UNION ALL
        SELECT p.participant_id, p.outbox_id, 'payment.under_review', p.review_since, 1
          FROM symphony.payment_outbox_pending p
         WHERE p.review_reason IS NOT NULL) c
 CROSS JOIN LATERAL symphony.payment_event_payload(c.participant_id, c.outbox_id) b;

INSERT INTO symphony.participant_event_sequences (participant_id, last_event_seq)
SELECT e.participant_id, max(e.event_seq)
  FROM symphony.payment_events e
 GROUP BY e.participant_id;

RESET ROLE;

-- grants ----------------------------------------------------------------------------------------

REVOKE ALL ON symphony.payment_events, symphony.participant_event_sequences,
              symphony.participant_attempt_view FROM PUBLIC;
REVOKE ALL ON FUNCTION
    symphony.check_event_sequence_forward(),
    symphony.payment_event_payload(text, uuid),
    symphony.append_payment_events(text[], uuid[], text[]),
    symphony.emit_created_events(),
    symphony.emit_ledger_events(),
    symphony.participant_events(text, bigint, integer, text)
    FROM PUBLIC;

-- The API reads a participant's events through the scoped function only.
GRANT EXECUTE ON FUNCTION symphony.participant_events(text, bigint, integer, text)
    TO symphony_readonly;
-- The auditor proves every event against the ledger (`audit verify`).
GRANT SELECT ON symphony.payment_events TO symphony_auditor;
