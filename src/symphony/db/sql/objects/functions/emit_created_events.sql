-- symphony.emit_created_events: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0016_payment_events.sql.

-- payment.created: after the pending rows of a statement are in (the payment then shows as
-- PENDING with its first next_attempt_at, as GET shows it right after the POST).
CREATE OR REPLACE FUNCTION symphony.emit_created_events() RETURNS trigger
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

REVOKE ALL ON FUNCTION symphony.emit_created_events()
    FROM PUBLIC;
