-- symphony.payment_event_payload: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0016_payment_events.sql.

-- The event body: what participant_payment and participant_payment_attempts return for the
-- item, as one JSON object (the attempts under "attempts", oldest first). A plain SQL table
-- function without SET or SECURITY DEFINER so the planner inlines it into the trigger's
-- statement (one set-based insert per statement, no function call per event); owner-only.
CREATE OR REPLACE FUNCTION symphony.payment_event_payload(
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

REVOKE ALL ON FUNCTION symphony.payment_event_payload(text, uuid)
    FROM PUBLIC;
