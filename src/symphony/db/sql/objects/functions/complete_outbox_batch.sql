-- symphony.complete_outbox_batch: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migrations 0006_money_safety.sql and 0010_distribution_keys.sql.

-- complete: once an attempt of an item may have executed (needs_lookup), nothing but the
-- rail's confirmation (DISPATCHED) or an operator's review may end it. A clean refusal of a
-- later attempt proves nothing about the earlier call, which may still land: a requested
-- FAILED becomes a retry that the next attempt settles by lookup, and after an ambiguous
-- outcome the next attempt waits at least the settle time. An unsettled item that reaches
-- the retry ceiling goes to review instead of retrying for ever.
CREATE OR REPLACE FUNCTION symphony.complete_outbox_batch(
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
    -- What the request means, before the ceiling: `unsettled` items may have been executed
    -- by some attempt (this one or an earlier one), so only DISPATCHED may end them.
    judged AS (
        SELECT h.*, i.outcome, i.error_code, i.error_detail, i.ambiguous, i.rail_tx,
               (h.needs_lookup OR i.ambiguous) AS unsettled,
               (i.outcome = 'FAILED' AND h.needs_lookup) AS held_open,
               (i.outcome <> 'DISPATCHED' AND h.attempt_count >= pol.max_attempts) AS at_ceiling
          FROM held h
          JOIN input i ON i.outbox_id = h.outbox_id
          CROSS JOIN policy pol
    ),
    decided AS (
        SELECT j.outbox_id, j.claimed_by, j.lease_token, j.last_attempt_no + 1 AS attempt_no,
               j.unsettled, j.rail_tx,
               CASE
                   WHEN j.outcome = 'DISPATCHED' THEN 'DISPATCHED'
                   WHEN j.outcome = 'FAILED' AND NOT j.held_open THEN 'FAILED'
                   -- The retry ceiling fails only items the rail certainly never executed.
                   WHEN j.at_ceiling AND NOT j.unsettled THEN 'FAILED'
                   ELSE 'RETRYABLE'
               END::attempt_state AS state,
               CASE
                   WHEN j.outcome = 'RETRYABLE' AND j.at_ceiling AND NOT j.unsettled
                       THEN 'RETRY_LIMIT_EXCEEDED'
                   ELSE left(j.error_code, 64)
               END AS error_code,
               CASE
                   WHEN j.outcome = 'RETRYABLE' AND j.at_ceiling AND NOT j.unsettled
                       THEN left(format('gave up after %s attempts; last error %s: %s',
                                        j.attempt_count, coalesce(j.error_code, '-'),
                                        coalesce(j.error_detail, '-')), 1000)
                   WHEN j.held_open
                       THEN left(format('held open, not failed: an earlier attempt may have '
                                        'executed; the rail answered %s: %s',
                                        coalesce(j.error_code, '-'),
                                        coalesce(j.error_detail, '-')), 1000)
                   ELSE left(j.error_detail, 1000)
               END AS error_detail,
               -- An unsettled item at the ceiling is not retried again: an operator decides.
               CASE
                   WHEN j.outcome <> 'DISPATCHED' AND j.at_ceiling AND j.unsettled
                        AND NOT (j.outcome = 'FAILED' AND NOT j.held_open)
                       THEN 'UNSETTLED_AT_RETRY_LIMIT'
               END AS review_reason,
               -- Exponential backoff with jitter, capped: attempt n waits base * 2^(n-1);
               -- an unsettled item waits at least the settle time before its lookup.
               greatest(
                   clock_timestamp() + make_interval(secs =>
                       least(pol.backoff_max_ms::numeric,
                             pol.backoff_base_ms
                                 * power(2::numeric, least(j.attempt_count - 1, 30)))
                       * (1 - pol.jitter_ratio * random()::numeric) / 1000.0),
                   CASE WHEN j.unsettled
                        THEN clock_timestamp()
                             + make_interval(secs => pol.ambiguous_settle_ms / 1000.0)
                   END) AS retry_at
          FROM judged j
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
               next_attempt_at = CASE WHEN d.review_reason IS NULL THEN d.retry_at
                                      ELSE clock_timestamp() END,
               needs_lookup    = p.needs_lookup OR d.unsettled,
               last_error_code = d.error_code,
               review_reason   = d.review_reason,
               review_since    = CASE WHEN d.review_reason IS NOT NULL
                                      THEN clock_timestamp() END
          FROM decided d
         WHERE p.outbox_id = d.outbox_id AND d.state = 'RETRYABLE'
           AND p.outbox_id = ANY (p_outbox_ids)
        RETURNING p.outbox_id, p.next_attempt_at, p.review_reason
    )
    SELECT i.outbox_id,
           CASE WHEN d.outbox_id IS NULL THEN 'FENCED' ELSE 'COMPLETED' END,
           d.state::text,
           d.attempt_no,
           -- An item under review has no next attempt: an operator decides.
           CASE WHEN r.review_reason IS NULL THEN r.next_attempt_at END
      FROM input i
      LEFT JOIN decided d ON d.outbox_id = i.outbox_id
      LEFT JOIN rescheduled r ON r.outbox_id = i.outbox_id;
END
$$;

REVOKE ALL ON FUNCTION symphony.complete_outbox_batch(uuid[], uuid[], text[], text[], text[], boolean[], text[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.complete_outbox_batch(uuid[], uuid[], text[], text[], text[], boolean[], text[])
    TO symphony_executor;

-- The completion of 0006, with every statement restricted to the range's participants and
-- buckets. An item outside the range is not held by this statement: it is answered FENCED
-- and nothing is written for it (as for a stale lease, I9).
CREATE OR REPLACE FUNCTION symphony.complete_outbox_batch(
    p_outbox_ids           uuid[],
    p_lease_tokens         uuid[],
    p_outcomes             text[],
    p_error_codes          text[],
    p_error_details        text[],
    p_ambiguous            boolean[],
    p_rail_transaction_ids text[],
    p_bucket_from          integer,
    p_bucket_to            integer
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
    v_n            integer := coalesce(cardinality(p_outbox_ids), 0);
    v_participants text[];
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
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL
       OR NOT (0 <= p_bucket_from AND p_bucket_from <= p_bucket_to AND p_bucket_to <= 255) THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'complete_bucket_range';
    END IF;
    v_participants := ARRAY(
        SELECT pt.participant_id FROM participants pt
         WHERE pt.bucket BETWEEN p_bucket_from AND p_bucket_to);

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
    held AS (
        SELECT p.outbox_id, p.participant_id, p.attempt_count, p.last_attempt_no, p.claimed_by,
               p.lease_token, p.needs_lookup
          FROM payment_outbox_pending p
          JOIN input i ON i.outbox_id = p.outbox_id AND i.lease_token = p.lease_token
         WHERE p.outbox_id = ANY (p_outbox_ids)
           -- The range's participants are the range (a bucket is a function of the
           -- participant): both key columns, so the primary key finds the few rows.
           AND p.participant_id = ANY (v_participants)
           FOR UPDATE OF p
    ),
    judged AS (
        SELECT h.*, i.outcome, i.error_code, i.error_detail, i.ambiguous, i.rail_tx,
               (h.needs_lookup OR i.ambiguous) AS unsettled,
               (i.outcome = 'FAILED' AND h.needs_lookup) AS held_open,
               (h.attempt_count >= pol.max_attempts) AS at_ceiling
          FROM held h
          JOIN input i ON i.outbox_id = h.outbox_id
          CROSS JOIN policy pol
    ),
    decided AS (
        SELECT j.outbox_id, j.participant_id, j.claimed_by, j.lease_token,
               j.last_attempt_no + 1 AS attempt_no, j.unsettled, j.rail_tx,
               CASE
                   WHEN j.outcome = 'DISPATCHED' THEN 'DISPATCHED'
                   WHEN j.outcome = 'FAILED' AND NOT j.held_open THEN 'FAILED'
                   WHEN j.at_ceiling AND NOT j.unsettled THEN 'FAILED'
                   ELSE 'RETRYABLE'
               END::attempt_state AS state,
               CASE
                   WHEN j.outcome = 'RETRYABLE' AND j.at_ceiling AND NOT j.unsettled
                       THEN 'RETRY_LIMIT_EXCEEDED'
                   ELSE left(j.error_code, 64)
               END AS error_code,
               CASE
                   WHEN j.outcome = 'RETRYABLE' AND j.at_ceiling AND NOT j.unsettled
                       THEN left(format('gave up after %s attempts; last error %s: %s',
                                        j.attempt_count, coalesce(j.error_code, '-'),
                                        coalesce(j.error_detail, '-')), 1000)
                   WHEN j.held_open
                       THEN left(format('held open, not failed: an earlier attempt may have '
                                        'executed; the rail answered %s: %s',
                                        coalesce(j.error_code, '-'),
                                        coalesce(j.error_detail, '-')), 1000)
                   ELSE left(j.error_detail, 1000)
               END AS error_detail,
               CASE
                   WHEN j.outcome <> 'DISPATCHED' AND j.at_ceiling AND j.unsettled
                        AND NOT (j.outcome = 'FAILED' AND NOT j.held_open)
                       THEN 'UNSETTLED_AT_RETRY_LIMIT'
               END AS review_reason,
               greatest(
                   clock_timestamp() + make_interval(secs =>
                       least(pol.backoff_max_ms::numeric,
                             pol.backoff_base_ms
                                 * power(2::numeric, least(j.attempt_count - 1, 30)))
                       * (1 - pol.jitter_ratio * random()::numeric) / 1000.0),
                   CASE WHEN j.unsettled
                        THEN clock_timestamp()
                             + make_interval(secs => pol.ambiguous_settle_ms / 1000.0)
                   END) AS retry_at
          FROM judged j
          CROSS JOIN policy pol
    ),
    ledger AS (
        INSERT INTO payment_outbox_attempts
            (outbox_id, participant_id, attempt_no, state, worker_id, lease_token, error_code,
             error_detail, rail_transaction_id)
        SELECT d.outbox_id, d.participant_id, d.attempt_no, d.state, d.claimed_by,
               d.lease_token, d.error_code, d.error_detail, left(d.rail_tx, 200)
          FROM decided d
        RETURNING outbox_id
    ),
    finished AS (
        DELETE FROM payment_outbox_pending p
         USING decided d
         WHERE p.outbox_id = d.outbox_id AND p.participant_id = d.participant_id
           AND d.state IN ('DISPATCHED', 'FAILED')
           AND p.outbox_id = ANY (p_outbox_ids)
           AND p.participant_id = ANY (v_participants)
        RETURNING p.outbox_id
    ),
    rescheduled AS (
        UPDATE payment_outbox_pending p
           SET claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL, claimed_at = NULL,
               last_attempt_no = d.attempt_no,
               next_attempt_at = CASE WHEN d.review_reason IS NULL THEN d.retry_at
                                      ELSE clock_timestamp() END,
               needs_lookup    = p.needs_lookup OR d.unsettled,
               last_error_code = d.error_code,
               review_reason   = d.review_reason,
               review_since    = CASE WHEN d.review_reason IS NOT NULL
                                      THEN clock_timestamp() END
          FROM decided d
         WHERE p.outbox_id = d.outbox_id AND p.participant_id = d.participant_id
           AND d.state = 'RETRYABLE'
           AND p.outbox_id = ANY (p_outbox_ids)
           AND p.participant_id = ANY (v_participants)
        RETURNING p.outbox_id, p.next_attempt_at, p.review_reason
    )
    SELECT i.outbox_id,
           CASE WHEN d.outbox_id IS NULL THEN 'FENCED' ELSE 'COMPLETED' END,
           d.state::text,
           d.attempt_no,
           CASE WHEN r.review_reason IS NULL THEN r.next_attempt_at END
      FROM input i
      LEFT JOIN decided d ON d.outbox_id = i.outbox_id
      LEFT JOIN rescheduled r ON r.outbox_id = i.outbox_id;
END
$$;

REVOKE ALL ON FUNCTION symphony.complete_outbox_batch(uuid[], uuid[], text[], text[], text[], boolean[], text[], integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.complete_outbox_batch(uuid[], uuid[], text[], text[], text[], boolean[], text[], integer, integer)
    TO symphony_executor;
