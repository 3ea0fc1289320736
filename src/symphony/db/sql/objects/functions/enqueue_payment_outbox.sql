-- symphony.enqueue_payment_outbox: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0013_destination_characters.sql.

CREATE OR REPLACE FUNCTION symphony.enqueue_payment_outbox(
    p_instruction_id  text,
    p_idempotency_key text,
    p_participant_id  text,
    p_rail_type       text,
    p_payload         jsonb
) RETURNS TABLE (
    outbox_id   uuid,
    sequence_id bigint,
    state       text,
    created     boolean,
    created_at  timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_existing    payment_instruction_registry%ROWTYPE;
    v_outbox_id   uuid;
    v_sequence_id bigint;
    v_created_at  timestamptz;
BEGIN
    -- Validation: one function for this path and the batch's, so both refuse alike (each
    -- failure with its own SQLSTATE and constraint, in the same order as before).
    PERFORM enqueue_check_input(p_instruction_id, p_idempotency_key, p_participant_id,
                                p_rail_type, p_payload);
    -- FOR SHARE: a revocation waits for enqueues in flight, and an enqueue that waited on a
    -- revocation re-reads the row and is refused. Once revoke_participant has committed, no
    -- new item of that participant can commit.
    PERFORM 1 FROM participants pt
      WHERE pt.participant_id = p_participant_id AND pt.status = 'ACTIVE'
        FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the participant is not registered or not active'
            USING ERRCODE = 'SY030', CONSTRAINT = 'enqueue_participant_active';
    END IF;

    -- I1 under concurrency: callers with the same triple queue on one transaction-scoped
    -- lock, so exactly one allocates a sequence number and inserts; the others then find its
    -- row. A lock rather than INSERT .. ON CONFLICT so that losers never burn a sequence
    -- number. chr(31) cannot occur in any of the three (validated above).
    PERFORM pg_advisory_xact_lock(
        hashtextextended(p_participant_id || chr(31) || p_instruction_id || chr(31)
                         || p_idempotency_key, 7301));

    SELECT * INTO v_existing
      FROM payment_instruction_registry r
     WHERE r.participant_id = p_participant_id
       AND r.instruction_id = p_instruction_id
       AND r.idempotency_key = p_idempotency_key;

    IF FOUND THEN
        IF v_existing.rail_type <> p_rail_type
           OR v_existing.payload <> p_payload THEN
            RAISE EXCEPTION 'idempotency key was already used with a different request'
                USING ERRCODE = 'SY100', CONSTRAINT = 'payment_instruction_registry_same_request';
        END IF;
        RETURN QUERY
        SELECT v_existing.outbox_id,
               v_existing.sequence_id,
               coalesce(
                   (SELECT CASE WHEN p.lease_token IS NULL THEN 'PENDING' ELSE 'DISPATCHING' END
                      FROM payment_outbox_pending p
                     WHERE p.outbox_id = v_existing.outbox_id),
                   (SELECT a.state::text
                      FROM payment_outbox_attempts a
                     WHERE a.outbox_id = v_existing.outbox_id
                       AND a.state IN ('DISPATCHED', 'FAILED')),
                   'PENDING'),
               false,
               v_existing.created_at;
        RETURN;
    END IF;

    -- I8: the row lock on the participant's counter is held to commit, so numbers are handed
    -- out strictly in enqueue order.
    INSERT INTO participant_outbox_sequences AS s (participant_id, last_sequence_id)
    VALUES (p_participant_id, 1)
    ON CONFLICT ON CONSTRAINT participant_outbox_sequences_pkey
    DO UPDATE SET last_sequence_id = s.last_sequence_id + 1, updated_at = now()
    RETURNING s.last_sequence_id INTO v_sequence_id;

    v_outbox_id := gen_random_uuid();

    INSERT INTO payment_instruction_registry AS r
        (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, rail_type,
         payload)
    VALUES
        (p_instruction_id, p_idempotency_key, v_outbox_id, p_participant_id, v_sequence_id,
         p_rail_type, p_payload)
    RETURNING r.created_at INTO v_created_at;

    INSERT INTO payment_outbox_pending (outbox_id, participant_id, sequence_id)
    VALUES (v_outbox_id, p_participant_id, v_sequence_id);

    RETURN QUERY SELECT v_outbox_id, v_sequence_id, 'PENDING'::text, true, v_created_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.enqueue_payment_outbox(text, text, text, text, jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.enqueue_payment_outbox(text, text, text, text, jsonb)
    TO symphony_ingest;
