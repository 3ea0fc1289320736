-- symphony.emit_created_events: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0021_payment_events_cheaper.sql.

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

REVOKE ALL ON FUNCTION symphony.emit_created_events()
    FROM PUBLIC;
