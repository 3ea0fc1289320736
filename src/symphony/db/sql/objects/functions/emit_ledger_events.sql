-- symphony.emit_ledger_events: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0021_payment_events_cheaper.sql.

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

REVOKE ALL ON FUNCTION symphony.emit_ledger_events()
    FROM PUBLIC;
