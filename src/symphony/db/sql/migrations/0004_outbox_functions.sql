-- 0004 — the only doors into the outbox tables.
--
-- Why SECURITY DEFINER functions: runtime roles have no write privilege on any table; each
-- may only ask for a transition the function allows. Each function fixes search_path so a
-- caller cannot redirect it to objects of their own, validates its arguments in the database
-- (a bad request never depends on a client doing its checks) and raises SQLSTATEs of class SY
-- with a named CONSTRAINT, which the application maps to public error codes.
--
-- Claim, complete and repair are set-based: one statement handles a whole batch, so the cost
-- per item is an index probe and a row write, not a round trip.

SET LOCAL ROLE symphony_owner;

-- enqueue -------------------------------------------------------------------------------------

CREATE FUNCTION symphony.enqueue_payment_outbox(
    p_instruction_id  text,
    p_idempotency_key text,
    p_participant_id  text,
    p_rail_type       text,
    p_payload         jsonb
) RETURNS TABLE (
    outbox_id   uuid,
    sequence_id bigint,
    state       text,
    created     boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_amount      jsonb;
    v_amount_num  numeric;
    v_existing    payment_instruction_registry%ROWTYPE;
    v_outbox_id   uuid;
    v_sequence_id bigint;
BEGIN
    -- Validation: each failure has its own SQLSTATE so a client can act on it.
    IF p_instruction_id IS NULL OR p_instruction_id !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'instruction_id must be 1-128 letters, digits, ".", "_", ":" or "-"'
            USING ERRCODE = 'SY011', CONSTRAINT = 'enqueue_instruction_id';
    END IF;
    IF p_idempotency_key IS NULL OR p_idempotency_key !~ '^[!-~]{1,255}$' THEN
        RAISE EXCEPTION 'idempotency_key must be 1-255 printable ASCII characters'
            USING ERRCODE = 'SY012', CONSTRAINT = 'enqueue_idempotency_key';
    END IF;
    IF p_participant_id IS NULL OR p_participant_id !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$' THEN
        RAISE EXCEPTION 'participant_id must be 1-64 letters, digits, ".", "_", ":" or "-"'
            USING ERRCODE = 'SY013', CONSTRAINT = 'enqueue_participant_id';
    END IF;
    IF p_rail_type IS NULL OR NOT EXISTS (
        SELECT 1 FROM payment_rails r WHERE r.rail_type = p_rail_type AND r.enabled
    ) THEN
        RAISE EXCEPTION 'rail_type is not a known, enabled payment rail'
            USING ERRCODE = 'SY014', CONSTRAINT = 'enqueue_rail_type';
    END IF;
    IF p_payload IS NULL OR jsonb_typeof(p_payload) <> 'object' THEN
        RAISE EXCEPTION 'payload must be a JSON object'
            USING ERRCODE = 'SY015', CONSTRAINT = 'enqueue_payload_object';
    END IF;
    IF octet_length(p_payload::text) > 16384 THEN
        RAISE EXCEPTION 'payload must be at most 16384 bytes'
            USING ERRCODE = 'SY019', CONSTRAINT = 'enqueue_payload_size';
    END IF;
    -- Amounts are decimal strings: positive, at most 15 integer digits and 8 decimals. A JSON
    -- number is refused because JSON readers (Python's among them) turn it into a binary
    -- float, and no rail may see a rounded amount.
    v_amount := p_payload -> 'amount';
    IF v_amount IS NULL
       OR jsonb_typeof(v_amount) <> 'string'
       OR (v_amount #>> '{}') !~ '^[0-9]{1,15}(\.[0-9]{1,8})?$' THEN
        RAISE EXCEPTION 'payload.amount must be a decimal string, positive, with at most 8 '
                        'decimals'
            USING ERRCODE = 'SY016', CONSTRAINT = 'enqueue_payload_amount';
    END IF;
    v_amount_num := (v_amount #>> '{}')::numeric;
    IF v_amount_num <= 0 THEN
        RAISE EXCEPTION 'payload.amount must be greater than zero'
            USING ERRCODE = 'SY016', CONSTRAINT = 'enqueue_payload_amount';
    END IF;
    IF jsonb_typeof(p_payload -> 'currency') IS DISTINCT FROM 'string'
       OR (p_payload ->> 'currency') !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'payload.currency must be a 3-letter ISO 4217 code'
            USING ERRCODE = 'SY017', CONSTRAINT = 'enqueue_payload_currency';
    END IF;
    IF jsonb_typeof(p_payload -> 'destination') IS DISTINCT FROM 'string'
       OR char_length(p_payload ->> 'destination') NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'payload.destination must be a non-empty string of at most 256 characters'
            USING ERRCODE = 'SY018', CONSTRAINT = 'enqueue_payload_destination';
    END IF;

    -- I1 under concurrency: callers with the same key queue on one transaction-scoped lock,
    -- so exactly one allocates a sequence number and inserts; the others then find its row.
    -- A lock rather than INSERT .. ON CONFLICT so that losers never burn a sequence number.
    PERFORM pg_advisory_xact_lock(
        hashtextextended(p_instruction_id || chr(31) || p_idempotency_key, 7301));

    SELECT * INTO v_existing
      FROM payment_instruction_registry r
     WHERE r.instruction_id = p_instruction_id
       AND r.idempotency_key = p_idempotency_key;

    IF FOUND THEN
        IF v_existing.participant_id <> p_participant_id
           OR v_existing.rail_type <> p_rail_type
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
               false;
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

    INSERT INTO payment_instruction_registry
        (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, rail_type,
         payload)
    VALUES
        (p_instruction_id, p_idempotency_key, v_outbox_id, p_participant_id, v_sequence_id,
         p_rail_type, p_payload);

    INSERT INTO payment_outbox_pending (outbox_id, participant_id, sequence_id)
    VALUES (v_outbox_id, p_participant_id, v_sequence_id);

    RETURN QUERY SELECT v_outbox_id, v_sequence_id, 'PENDING'::text, true;
END
$$;

-- claim ---------------------------------------------------------------------------------------

CREATE FUNCTION symphony.claim_outbox_batch(
    p_worker_id     text,
    p_batch_size    integer,
    p_lease_seconds integer
) RETURNS TABLE (
    outbox_id        uuid,
    lease_token      uuid,
    lease_expires_at timestamptz,
    attempt_no       integer,
    attempt_count    integer,
    needs_lookup     boolean,
    participant_id   text,
    sequence_id      bigint,
    instruction_id   text,
    rail_type        text,
    payload          jsonb
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'claim_worker_id';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'batch size must be between 1 and 10000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'claim_batch_size';
    END IF;
    IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'lease must be between 1 and 86400 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'claim_lease_seconds';
    END IF;

    RETURN QUERY
    WITH due AS (
        SELECT p.outbox_id
          FROM payment_outbox_pending p
         WHERE p.lease_token IS NULL
           AND p.next_attempt_at <= now()
         ORDER BY p.next_attempt_at
         LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ),
    leased AS (
        UPDATE payment_outbox_pending p
           SET claimed_by       = p_worker_id,
               lease_token      = gen_random_uuid(),
               claimed_at       = now(),
               lease_expires_at = now() + make_interval(secs => p_lease_seconds),
               attempt_count    = p.attempt_count + 1,
               last_attempt_no  = p.last_attempt_no + 1
          FROM due
         WHERE p.outbox_id = due.outbox_id
           -- Spelled out so the update probes the primary key for the few claimed rows
           -- instead of hash-joining against the whole queue.
           AND p.outbox_id = ANY (ARRAY(SELECT d.outbox_id FROM due d))
        RETURNING p.outbox_id, p.lease_token, p.lease_expires_at, p.last_attempt_no,
                  p.attempt_count, p.needs_lookup
    ),
    -- Data-modifying CTEs run exactly once whether or not the final SELECT reads them.
    ledger AS (
        INSERT INTO payment_outbox_attempts (outbox_id, attempt_no, state, worker_id, lease_token)
        SELECT l.outbox_id, l.last_attempt_no, 'DISPATCHING', p_worker_id, l.lease_token
          FROM leased l
        RETURNING 1
    )
    SELECT l.outbox_id, l.lease_token, l.lease_expires_at, l.last_attempt_no, l.attempt_count,
           l.needs_lookup, r.participant_id, r.sequence_id, r.instruction_id, r.rail_type,
           r.payload
      FROM leased l
      JOIN payment_instruction_registry r ON r.outbox_id = l.outbox_id
     ORDER BY r.participant_id, r.sequence_id;
END
$$;

-- complete ------------------------------------------------------------------------------------

CREATE FUNCTION symphony.complete_outbox_batch(
    p_outbox_ids           uuid[],
    p_lease_tokens         uuid[],
    p_outcomes             text[],
    p_error_codes          text[],
    p_error_details        text[],
    p_ambiguous            boolean[],
    p_rail_transaction_ids text[]
) RETURNS TABLE (
    outbox_id       uuid,
    result          text,
    state           text,
    attempt_no      integer,
    next_attempt_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_n integer := coalesce(cardinality(p_outbox_ids), 0);
BEGIN
    IF v_n = 0 OR v_n > 10000 THEN
        RAISE EXCEPTION 'a completion batch holds between 1 and 10000 items'
            USING ERRCODE = 'SY021', CONSTRAINT = 'complete_batch_size';
    END IF;
    IF coalesce(cardinality(p_lease_tokens), 0) <> v_n
       OR coalesce(cardinality(p_outcomes), 0) <> v_n
       OR coalesce(cardinality(p_error_codes), 0) <> v_n
       OR coalesce(cardinality(p_error_details), 0) <> v_n
       OR coalesce(cardinality(p_ambiguous), 0) <> v_n
       OR coalesce(cardinality(p_rail_transaction_ids), 0) <> v_n THEN
        RAISE EXCEPTION 'every completion argument must have one element per item'
            USING ERRCODE = 'SY023', CONSTRAINT = 'complete_batch_shape';
    END IF;
    IF EXISTS (
        SELECT 1 FROM unnest(p_outbox_ids, p_lease_tokens, p_outcomes, p_ambiguous)
                     AS i(outbox_id, lease_token, outcome, ambiguous)
         WHERE i.outbox_id IS NULL OR i.lease_token IS NULL OR i.ambiguous IS NULL
            OR i.outcome IS NULL OR i.outcome NOT IN ('DISPATCHED', 'RETRYABLE', 'FAILED')
            -- An outcome that may have executed is a retry (with a lookup), never a failure.
            OR (i.outcome = 'FAILED' AND i.ambiguous)
    ) THEN
        RAISE EXCEPTION 'each completion needs an outbox_id, a lease token and an outcome of '
                        'DISPATCHED, RETRYABLE or FAILED (an ambiguous outcome is RETRYABLE)'
            USING ERRCODE = 'SY024', CONSTRAINT = 'complete_outcome';
    END IF;
    IF (SELECT count(DISTINCT x) FROM unnest(p_outbox_ids) AS x) <> v_n THEN
        RAISE EXCEPTION 'an item may be completed once per batch'
            USING ERRCODE = 'SY025', CONSTRAINT = 'complete_batch_duplicate';
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT i.*
          FROM unnest(p_outbox_ids, p_lease_tokens, p_outcomes, p_error_codes,
                      p_error_details, p_ambiguous, p_rail_transaction_ids)
               AS i(outbox_id, lease_token, outcome, error_code, error_detail, ambiguous, rail_tx)
    ),
    policy AS (
        SELECT * FROM outbox_retry_policy WHERE singleton
    ),
    -- I9: only the holder of the current lease may complete. A row whose token changed since
    -- (repaired, reclaimed) is not matched here and is answered FENCED below.
    held AS (
        SELECT p.outbox_id, p.attempt_count, p.last_attempt_no, p.claimed_by, p.lease_token,
               p.needs_lookup
          FROM payment_outbox_pending p
          JOIN input i ON i.outbox_id = p.outbox_id AND i.lease_token = p.lease_token
         WHERE p.outbox_id = ANY (p_outbox_ids)
           FOR UPDATE OF p
    ),
    -- The retry ceiling turns a retry into FAILED only when the rail certainly never executed
    -- the item: no attempt of it ever ended ambiguously. After a timeout or a zombie, a later
    -- clean refusal proves nothing about the earlier call, which may still land; declaring the
    -- item FAILED could make a participant pay twice. Such an item keeps being looked up with
    -- capped backoff until the rail answers, and shows in the status view meanwhile.
    decided AS (
        SELECT h.outbox_id, h.claimed_by, h.lease_token, h.last_attempt_no + 1 AS attempt_no,
               i.ambiguous, i.rail_tx,
               CASE
                   WHEN i.outcome = 'RETRYABLE' AND NOT i.ambiguous AND NOT h.needs_lookup
                        AND h.attempt_count >= pol.max_attempts
                       THEN 'FAILED'
                   ELSE i.outcome
               END::attempt_state AS state,
               CASE
                   WHEN i.outcome = 'RETRYABLE' AND NOT i.ambiguous AND NOT h.needs_lookup
                        AND h.attempt_count >= pol.max_attempts
                       THEN 'RETRY_LIMIT_EXCEEDED'
                   ELSE left(i.error_code, 64)
               END AS error_code,
               CASE
                   WHEN i.outcome = 'RETRYABLE' AND NOT i.ambiguous AND NOT h.needs_lookup
                        AND h.attempt_count >= pol.max_attempts
                       THEN left(format('gave up after %s attempts; last error %s: %s',
                                        h.attempt_count, coalesce(i.error_code, '-'),
                                        coalesce(i.error_detail, '-')), 1000)
                   ELSE left(i.error_detail, 1000)
               END AS error_detail,
               -- Exponential backoff with jitter, capped: attempt n waits base * 2^(n-1).
               now() + make_interval(secs =>
                   least(pol.backoff_max_ms::numeric,
                         pol.backoff_base_ms * power(2::numeric, least(h.attempt_count - 1, 30)))
                   * (1 - pol.jitter_ratio * random()::numeric) / 1000.0) AS retry_at
          FROM held h
          JOIN input i ON i.outbox_id = h.outbox_id
          CROSS JOIN policy pol
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail,
             rail_transaction_id)
        SELECT d.outbox_id, d.attempt_no, d.state, d.claimed_by, d.lease_token, d.error_code,
               d.error_detail, left(d.rail_tx, 200)
          FROM decided d
        RETURNING outbox_id
    ),
    finished AS (
        DELETE FROM payment_outbox_pending p
         USING decided d
         WHERE p.outbox_id = d.outbox_id AND d.state IN ('DISPATCHED', 'FAILED')
           AND p.outbox_id = ANY (p_outbox_ids)
        RETURNING p.outbox_id
    ),
    rescheduled AS (
        UPDATE payment_outbox_pending p
           SET claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL, claimed_at = NULL,
               last_attempt_no = d.attempt_no,
               next_attempt_at = d.retry_at,
               needs_lookup    = p.needs_lookup OR d.ambiguous,
               last_error_code = d.error_code
          FROM decided d
         WHERE p.outbox_id = d.outbox_id AND d.state = 'RETRYABLE'
           AND p.outbox_id = ANY (p_outbox_ids)
        RETURNING p.outbox_id, p.next_attempt_at
    )
    SELECT i.outbox_id,
           CASE WHEN d.outbox_id IS NULL THEN 'FENCED' ELSE 'COMPLETED' END,
           d.state::text,
           d.attempt_no,
           r.next_attempt_at
      FROM input i
      LEFT JOIN decided d ON d.outbox_id = i.outbox_id
      LEFT JOIN rescheduled r ON r.outbox_id = i.outbox_id;
END
$$;

CREATE FUNCTION symphony.complete_outbox_attempt(
    p_outbox_id           uuid,
    p_lease_token         uuid,
    p_outcome             text,
    p_error_code          text DEFAULT NULL,
    p_error_detail        text DEFAULT NULL,
    p_ambiguous           boolean DEFAULT false,
    p_rail_transaction_id text DEFAULT NULL
) RETURNS TABLE (
    outbox_id       uuid,
    state           text,
    attempt_no      integer,
    next_attempt_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row record;
BEGIN
    SELECT * INTO v_row
      FROM complete_outbox_batch(
          ARRAY[p_outbox_id], ARRAY[p_lease_token], ARRAY[p_outcome], ARRAY[p_error_code],
          ARRAY[p_error_detail], ARRAY[coalesce(p_ambiguous, false)],
          ARRAY[p_rail_transaction_id]) AS c;
    -- I9: a stale or foreign token writes nothing and says so with its own SQLSTATE.
    IF v_row.result = 'FENCED' THEN
        RAISE EXCEPTION 'the lease on this outbox item is no longer held by the caller'
            USING ERRCODE = 'SY200', CONSTRAINT = 'payment_outbox_pending_lease_fence';
    END IF;
    RETURN QUERY SELECT v_row.outbox_id, v_row.state, v_row.attempt_no, v_row.next_attempt_at;
END
$$;

-- repair --------------------------------------------------------------------------------------

CREATE FUNCTION symphony.repair_expired_leases(
    p_limit             integer DEFAULT 1000,
    p_threshold_seconds integer DEFAULT NULL
) RETURNS TABLE (
    outbox_id        uuid,
    attempt_no       integer,
    attempt_count    integer,
    claimed_by       text,
    lease_expires_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_repaired integer;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'repair limit must be between 1 and 100000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'repair_limit';
    END IF;
    IF p_threshold_seconds IS NOT NULL AND p_threshold_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'zombie threshold must be between 1 and 86400 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'repair_threshold';
    END IF;

    RETURN QUERY
    WITH stale AS (
        SELECT p.outbox_id, p.claimed_by, p.lease_token, p.lease_expires_at
          FROM payment_outbox_pending p
         WHERE p.lease_token IS NOT NULL
           -- Only an expired lease is stale: a live lease is never taken from its holder,
           -- whatever threshold a repair process was started with. The threshold can only
           -- make the repair wait longer (a lease is also at least that old).
           AND p.lease_expires_at <= now()
           AND (p_threshold_seconds IS NULL
                OR p.claimed_at <= now() - make_interval(secs => p_threshold_seconds))
         ORDER BY p.lease_expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ),
    requeued AS (
        -- Same row, same outbox_id: the item returns to PENDING and is due at once. Its next
        -- dispatcher must ask the rail first, since the dead worker may have sent it (I10).
        UPDATE payment_outbox_pending p
           SET claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL, claimed_at = NULL,
               last_attempt_no = p.last_attempt_no + 1,
               next_attempt_at = now(),
               needs_lookup    = true,
               last_error_code = 'ZOMBIE_REQUEUE'
          FROM stale s
         WHERE p.outbox_id = s.outbox_id
           AND p.outbox_id = ANY (ARRAY(SELECT x.outbox_id FROM stale x))
        RETURNING p.outbox_id, p.last_attempt_no, p.attempt_count
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, attempt_no, state, worker_id, lease_token, error_code, error_detail)
        SELECT q.outbox_id, q.last_attempt_no, 'ZOMBIE_REQUEUE', s.claimed_by, s.lease_token,
               'LEASE_EXPIRED',
               left(format('lease held by %s expired at %s', s.claimed_by, s.lease_expires_at),
                    1000)
          FROM requeued q
          JOIN stale s ON s.outbox_id = q.outbox_id
        RETURNING 1
    )
    SELECT q.outbox_id, q.last_attempt_no, q.attempt_count, s.claimed_by, s.lease_expires_at
      FROM requeued q
      JOIN stale s ON s.outbox_id = q.outbox_id
     ORDER BY s.lease_expires_at;

    GET DIAGNOSTICS v_repaired = ROW_COUNT;
    IF v_repaired > 0 THEN
        PERFORM pg_notify('symphony_outbox_pending', '');
    END IF;
END
$$;
