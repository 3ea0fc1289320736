-- symphony.emit_ledger_events: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0016_payment_events.sql.

-- payment.dispatched / failed / canceled / under_review: after a statement appended ledger
-- rows. Most statements (claims) append only DISPATCHING rows and end after one pass over
-- the transition table.
CREATE OR REPLACE FUNCTION symphony.emit_ledger_events() RETURNS trigger
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

REVOKE ALL ON FUNCTION symphony.emit_ledger_events()
    FROM PUBLIC;
