-- symphony.participant_events: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0016_payment_events.sql.

-- The participant's events after `p_after` (an event_seq; 0 for the first page), oldest
-- first, at most `p_limit`, optionally of one type. Each branch is one range scan of an index
-- on (participant_id, ...): a page costs its own rows.
CREATE OR REPLACE FUNCTION symphony.participant_events(
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

REVOKE ALL ON FUNCTION symphony.participant_events(text, bigint, integer, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.participant_events(text, bigint, integer, text)
    TO symphony_readonly;
