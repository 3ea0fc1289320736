-- symphony.repair_expired_leases: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migrations 0006_money_safety.sql and 0010_distribution_keys.sql.

-- repair: a requeued zombie may have been sent by its dead worker, so its lookup waits the
-- settle time like any other ambiguous outcome.
CREATE OR REPLACE FUNCTION symphony.repair_expired_leases(
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
    v_settle   interval;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'repair limit must be between 1 and 100000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'repair_limit';
    END IF;
    IF p_threshold_seconds IS NOT NULL AND p_threshold_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'zombie threshold must be between 1 and 86400 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'repair_threshold';
    END IF;
    SELECT make_interval(secs => pol.ambiguous_settle_ms / 1000.0) INTO v_settle
      FROM outbox_retry_policy pol WHERE pol.singleton;

    RETURN QUERY
    WITH stale AS (
        SELECT p.outbox_id, p.claimed_by, p.lease_token, p.lease_expires_at
          FROM payment_outbox_pending p
         WHERE p.lease_token IS NOT NULL
           -- Only an expired lease is stale: a live lease is never taken from its holder,
           -- whatever threshold a repair process was started with.
           AND p.lease_expires_at <= now()
           AND (p_threshold_seconds IS NULL
                OR p.claimed_at <= now() - make_interval(secs => p_threshold_seconds))
         ORDER BY p.lease_expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ),
    requeued AS (
        UPDATE payment_outbox_pending p
           SET claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL, claimed_at = NULL,
               last_attempt_no = p.last_attempt_no + 1,
               next_attempt_at = clock_timestamp() + v_settle,
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

REVOKE ALL ON FUNCTION symphony.repair_expired_leases(integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.repair_expired_leases(integer, integer)
    TO symphony_control, symphony_executor;

-- The repair of 0006 restricted to a bucket range, so each worker can repair its own buckets
-- (a fleet covers every bucket; the old signature still repairs across all of them).
CREATE OR REPLACE FUNCTION symphony.repair_expired_leases(
    p_limit             integer,
    p_threshold_seconds integer,
    p_bucket_from       integer,
    p_bucket_to         integer
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
    v_repaired     integer;
    v_settle       interval;
    v_participants text[];
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'repair limit must be between 1 and 100000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'repair_limit';
    END IF;
    IF p_threshold_seconds IS NOT NULL AND p_threshold_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'zombie threshold must be between 1 and 86400 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'repair_threshold';
    END IF;
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL
       OR NOT (0 <= p_bucket_from AND p_bucket_from <= p_bucket_to AND p_bucket_to <= 255) THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'repair_bucket_range';
    END IF;
    SELECT make_interval(secs => pol.ambiguous_settle_ms / 1000.0) INTO v_settle
      FROM outbox_retry_policy pol WHERE pol.singleton;
    v_participants := ARRAY(
        SELECT pt.participant_id FROM participants pt
         WHERE pt.bucket BETWEEN p_bucket_from AND p_bucket_to);

    RETURN QUERY
    WITH stale AS (
        SELECT p.outbox_id, p.participant_id, p.claimed_by, p.lease_token, p.lease_expires_at
          FROM payment_outbox_pending p
         WHERE p.bucket BETWEEN p_bucket_from AND p_bucket_to
           AND p.participant_id = ANY (v_participants)
           AND p.lease_token IS NOT NULL
           AND p.lease_expires_at <= now()
           AND (p_threshold_seconds IS NULL
                OR p.claimed_at <= now() - make_interval(secs => p_threshold_seconds))
         ORDER BY p.lease_expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ),
    requeued AS (
        UPDATE payment_outbox_pending p
           SET claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL, claimed_at = NULL,
               last_attempt_no = p.last_attempt_no + 1,
               next_attempt_at = clock_timestamp() + v_settle,
               needs_lookup    = true,
               last_error_code = 'ZOMBIE_REQUEUE'
          FROM stale s
         WHERE p.outbox_id = s.outbox_id AND p.participant_id = s.participant_id
           AND p.outbox_id = ANY (ARRAY(SELECT x.outbox_id FROM stale x))
           AND p.participant_id = ANY (v_participants)
        RETURNING p.outbox_id, p.participant_id, p.last_attempt_no, p.attempt_count
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, participant_id, attempt_no, state, worker_id, lease_token, error_code,
             error_detail)
        SELECT q.outbox_id, q.participant_id, q.last_attempt_no, 'ZOMBIE_REQUEUE', s.claimed_by,
               s.lease_token, 'LEASE_EXPIRED',
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

REVOKE ALL ON FUNCTION symphony.repair_expired_leases(integer, integer, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.repair_expired_leases(integer, integer, integer, integer)
    TO symphony_control, symphony_executor;
