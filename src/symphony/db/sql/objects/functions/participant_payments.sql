-- symphony.participant_payments: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0023_cancellation.sql.

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

REVOKE ALL ON FUNCTION symphony.participant_payments(text, text, uuid, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.participant_payments(text, text, uuid, integer)
    TO symphony_control, symphony_readonly;
