-- 0021 — payment events, cheaper: the same events, numbers and payloads for less work per
-- payment.
--
-- Why: measured side by side (scripts/bench/events_cost.py, and the same triggers switched on
-- and off in one database), the events of 0016 cost a single enqueue about as much server CPU
-- again as the enqueue itself (×1.9-2.3) and claim + complete ×1.3-1.7. Most of it was the
-- shape, not the work: each trigger built arrays in PL/pgSQL and called a second function,
-- whose INSERT (with the payload view inlined) was prepared and run per call, and every event
-- row paid a foreign-key probe of the registry. Now each trigger is one statement: its
-- transition table numbered per participant, the counters bumped by one INSERT .. ON CONFLICT
-- in participant order, the events inserted with their payloads. Measured the same way:
-- ×1.1-1.25 per single enqueue and ×1.05-1.15 per claim + complete.
-- * The counters are still locked in one global order (participant_id, collation "C"): the
--   upsert takes its rows in the order of its sorted SELECT, one participant after the other,
--   so two statements that share participants never wait on each other in a cycle.
-- * The foreign key from payment_events to the registry goes: the events' only writers are
--   these triggers, which take outbox_id and participant_id from the rows that caused them,
--   and `audit verify` (E1) proves every event against its cause (EVENT_WITHOUT_CAUSE).
-- * append_payment_events is no longer called and is dropped.
-- The table, its keys, the numbering rule and the payload are unchanged.

SET LOCAL ROLE symphony_owner;

ALTER TABLE symphony.payment_events DROP CONSTRAINT payment_events_outbox_id_fkey;

-- payment.created: after the pending rows of a statement are in. Changed from 0016 in shape
-- only (one statement).
CREATE OR REPLACE FUNCTION symphony.emit_created_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    WITH items AS (
        SELECT n.participant_id, n.outbox_id,
               row_number() OVER (PARTITION BY n.participant_id ORDER BY n.sequence_id) AS k,
               count(*) OVER (PARTITION BY n.participant_id) AS n
          FROM new_rows n
    ),
    counters AS (
        INSERT INTO participant_event_sequences AS s (participant_id, last_event_seq)
        SELECT i.participant_id, i.n FROM items i WHERE i.k = 1
         ORDER BY i.participant_id COLLATE "C"
        ON CONFLICT ON CONSTRAINT participant_event_sequences_pkey
        DO UPDATE SET last_event_seq = s.last_event_seq + excluded.last_event_seq
        RETURNING s.participant_id, s.last_event_seq
    )
    INSERT INTO payment_events (participant_id, event_seq, event_type, outbox_id, payload)
    SELECT i.participant_id, c.last_event_seq - i.n + i.k, 'payment.created', i.outbox_id,
           b.payload
      FROM items i
      JOIN counters c ON c.participant_id = i.participant_id
     CROSS JOIN LATERAL payment_event_payload(i.participant_id, i.outbox_id) b;
    RETURN NULL;
END
$$;

-- payment.dispatched / failed / canceled / under_review: after a statement appended ledger
-- rows; a claim (DISPATCHING rows only) ends after one look at its transition table. Changed
-- from 0016 in shape only (one statement).
CREATE OR REPLACE FUNCTION symphony.emit_ledger_events() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.state <> 'DISPATCHING') THEN
        RETURN NULL;
    END IF;
    WITH found AS (
        SELECT n.participant_id, n.outbox_id, n.attempt_id,
               CASE n.state::text
                   WHEN 'DISPATCHED' THEN 'payment.dispatched'
                   WHEN 'FAILED' THEN 'payment.failed'
                   WHEN 'CANCELED' THEN 'payment.canceled'
                   ELSE 'payment.under_review'
               END AS event_type
          FROM new_rows n
         WHERE n.state::text IN ('DISPATCHED', 'FAILED', 'CANCELED')
            -- A per-row probe of the pending row's primary key (a scalar subquery with LIMIT
            -- is never turned into a join over the queue), for RETRYABLE rows only.
            OR (n.state = 'RETRYABLE' AND coalesce(
                    (SELECT p.review_reason IS NOT NULL
                       FROM payment_outbox_pending p
                      WHERE p.outbox_id = n.outbox_id
                        AND p.participant_id = n.participant_id
                      LIMIT 1), false))
    ),
    items AS (
        SELECT f.*,
               row_number() OVER (PARTITION BY f.participant_id ORDER BY f.attempt_id) AS k,
               count(*) OVER (PARTITION BY f.participant_id) AS n
          FROM found f
    ),
    counters AS (
        INSERT INTO participant_event_sequences AS s (participant_id, last_event_seq)
        SELECT i.participant_id, i.n FROM items i WHERE i.k = 1
         ORDER BY i.participant_id COLLATE "C"
        ON CONFLICT ON CONSTRAINT participant_event_sequences_pkey
        DO UPDATE SET last_event_seq = s.last_event_seq + excluded.last_event_seq
        RETURNING s.participant_id, s.last_event_seq
    )
    INSERT INTO payment_events (participant_id, event_seq, event_type, outbox_id, payload)
    SELECT i.participant_id, c.last_event_seq - i.n + i.k, i.event_type, i.outbox_id, b.payload
      FROM items i
      JOIN counters c ON c.participant_id = i.participant_id
     CROSS JOIN LATERAL payment_event_payload(i.participant_id, i.outbox_id) b;
    RETURN NULL;
END
$$;

DROP FUNCTION symphony.append_payment_events(text[], uuid[], text[]);
