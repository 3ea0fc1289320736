-- symphony.claim_outbox_batch: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migrations 0006_money_safety.sql and 0010_distribution_keys.sql.

-- claim: the lease clock starts at clock_timestamp(), not at the transaction's start
-- (now()), so a lease is never shorter than the worker believes; and a lease may not
-- outlast the zombie threshold the repair uses.
CREATE OR REPLACE FUNCTION symphony.claim_outbox_batch(
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
DECLARE
    v_threshold integer;
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'claim_worker_id';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'batch size must be between 1 and 10000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'claim_batch_size';
    END IF;
    SELECT pol.zombie_threshold_seconds INTO v_threshold
      FROM outbox_retry_policy pol WHERE pol.singleton;
    IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND v_threshold THEN
        RAISE EXCEPTION 'lease must be between 1 second and the zombie threshold (% s)',
                        v_threshold
            USING ERRCODE = 'SY022', CONSTRAINT = 'claim_lease_seconds';
    END IF;

    RETURN QUERY
    WITH due AS (
        SELECT p.outbox_id
          FROM payment_outbox_pending p
         WHERE p.lease_token IS NULL
           AND p.review_reason IS NULL
           AND p.next_attempt_at <= now()
         ORDER BY p.next_attempt_at
         LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ),
    leased AS (
        UPDATE payment_outbox_pending p
           SET claimed_by       = p_worker_id,
               lease_token      = gen_random_uuid(),
               claimed_at       = clock_timestamp(),
               lease_expires_at = clock_timestamp() + make_interval(secs => p_lease_seconds),
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

REVOKE ALL ON FUNCTION symphony.claim_outbox_batch(text, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.claim_outbox_batch(text, integer, integer)
    TO symphony_executor;

-- The claim of 0006 restricted to the participants of a bucket range: every statement names
-- the range's participants (the distribution column) and the bucket, so on a sharded cluster
-- a range that lies within one shard is a single-shard statement. The old signature still
-- claims across all buckets (the single-node default).
CREATE OR REPLACE FUNCTION symphony.claim_outbox_batch(
    p_worker_id     text,
    p_batch_size    integer,
    p_lease_seconds integer,
    p_bucket_from   integer,
    p_bucket_to     integer
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
DECLARE
    v_threshold    integer;
    v_participants text[];
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'claim_worker_id';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'batch size must be between 1 and 10000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'claim_batch_size';
    END IF;
    SELECT pol.zombie_threshold_seconds INTO v_threshold
      FROM outbox_retry_policy pol WHERE pol.singleton;
    IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND v_threshold THEN
        RAISE EXCEPTION 'lease must be between 1 second and the zombie threshold (% s)',
                        v_threshold
            USING ERRCODE = 'SY022', CONSTRAINT = 'claim_lease_seconds';
    END IF;
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL
       OR NOT (0 <= p_bucket_from AND p_bucket_from <= p_bucket_to AND p_bucket_to <= 255) THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'claim_bucket_range';
    END IF;
    -- Participants are reference data (on every node): the range's distribution values.
    v_participants := ARRAY(
        SELECT pt.participant_id FROM participants pt
         WHERE pt.bucket BETWEEN p_bucket_from AND p_bucket_to);

    RETURN QUERY
    WITH due AS (
        SELECT p.outbox_id, p.participant_id
          FROM payment_outbox_pending p
         WHERE p.bucket BETWEEN p_bucket_from AND p_bucket_to
           AND p.participant_id = ANY (v_participants)
           AND p.lease_token IS NULL
           AND p.review_reason IS NULL
           AND p.next_attempt_at <= now()
         ORDER BY p.next_attempt_at
         LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ),
    leased AS (
        UPDATE payment_outbox_pending p
           SET claimed_by       = p_worker_id,
               lease_token      = gen_random_uuid(),
               claimed_at       = clock_timestamp(),
               lease_expires_at = clock_timestamp() + make_interval(secs => p_lease_seconds),
               attempt_count    = p.attempt_count + 1,
               last_attempt_no  = p.last_attempt_no + 1
          FROM due
         WHERE p.outbox_id = due.outbox_id
           AND p.participant_id = due.participant_id
           AND p.outbox_id = ANY (ARRAY(SELECT d.outbox_id FROM due d))
           AND p.participant_id = ANY (v_participants)
        RETURNING p.outbox_id, p.participant_id, p.lease_token, p.lease_expires_at,
                  p.last_attempt_no, p.attempt_count, p.needs_lookup
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, participant_id, attempt_no, state, worker_id, lease_token)
        SELECT l.outbox_id, l.participant_id, l.last_attempt_no, 'DISPATCHING', p_worker_id,
               l.lease_token
          FROM leased l
        RETURNING 1
    )
    SELECT l.outbox_id, l.lease_token, l.lease_expires_at, l.last_attempt_no, l.attempt_count,
           l.needs_lookup, r.participant_id, r.sequence_id, r.instruction_id, r.rail_type,
           r.payload
      FROM leased l
      -- By both key columns, nothing more: the registry's (outbox_id, participant_id) key.
      JOIN payment_instruction_registry r
        ON r.outbox_id = l.outbox_id AND r.participant_id = l.participant_id
     ORDER BY r.participant_id, r.sequence_id;
END
$$;

REVOKE ALL ON FUNCTION symphony.claim_outbox_batch(text, integer, integer, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.claim_outbox_batch(text, integer, integer, integer, integer)
    TO symphony_executor;
