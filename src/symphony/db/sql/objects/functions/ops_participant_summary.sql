-- symphony.ops_participant_summary: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

-- A participant's live items by state, its oldest pending item, and its items that ended in
-- the last hour and day. The pending rows are found through the participant's bucket (the
-- bucket indexes of 0010 and the review index), never by a pass over the queue.
CREATE OR REPLACE FUNCTION symphony.ops_participant_summary(
    p_participant_id text
) RETURNS TABLE (
    participant_id     text,
    display_name       text,
    status             text,
    bucket             smallint,
    due                bigint,
    scheduled          bigint,
    dispatching        bigint,
    zombies            bigint,
    under_review       bigint,
    pending_total      bigint,
    oldest_pending_at  timestamptz,
    dispatched_last_hour bigint,
    failed_last_hour   bigint,
    dispatched_last_day  bigint,
    failed_last_day    bigint,
    observed_at        timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    WITH pt AS (
        SELECT x.participant_id, x.display_name, x.status, x.bucket
          FROM participants x WHERE x.participant_id = p_participant_id
    ),
    live AS (
        SELECT p.next_attempt_at, p.created_at, 'WAITING'::text AS kind, NULL::timestamptz AS exp
          FROM payment_outbox_pending p, pt
         WHERE p.bucket = pt.bucket AND p.participant_id = pt.participant_id
           AND p.lease_token IS NULL AND p.review_reason IS NULL
        UNION ALL
        SELECT p.next_attempt_at, p.created_at, 'LEASED', p.lease_expires_at
          FROM payment_outbox_pending p, pt
         WHERE p.bucket = pt.bucket AND p.participant_id = pt.participant_id
           AND p.lease_token IS NOT NULL
        UNION ALL
        SELECT p.next_attempt_at, p.created_at, 'REVIEW', NULL
          FROM payment_outbox_pending p, pt
         WHERE p.review_reason IS NOT NULL AND p.participant_id = pt.participant_id
    ),
    ended AS (
        SELECT a.state, a.recorded_at
          FROM payment_outbox_attempts a, pt
         WHERE a.participant_id = pt.participant_id
           AND a.state IN ('DISPATCHED', 'FAILED')
           AND a.recorded_at >= now() - interval '1 day'
    )
    SELECT pt.participant_id, pt.display_name, pt.status, pt.bucket,
           (SELECT count(*) FROM live WHERE kind = 'WAITING' AND next_attempt_at <= now()),
           (SELECT count(*) FROM live WHERE kind = 'WAITING' AND next_attempt_at > now()),
           (SELECT count(*) FROM live WHERE kind = 'LEASED' AND exp > now()),
           (SELECT count(*) FROM live WHERE kind = 'LEASED' AND exp <= now()),
           (SELECT count(*) FROM live WHERE kind = 'REVIEW'),
           (SELECT count(*) FROM live),
           (SELECT min(created_at) FROM live),
           (SELECT count(*) FROM ended e WHERE e.state = 'DISPATCHED'
                                            AND e.recorded_at >= now() - interval '1 hour'),
           (SELECT count(*) FROM ended e WHERE e.state = 'FAILED'
                                            AND e.recorded_at >= now() - interval '1 hour'),
           (SELECT count(*) FROM ended e WHERE e.state = 'DISPATCHED'),
           (SELECT count(*) FROM ended e WHERE e.state = 'FAILED'),
           now()
      FROM pt
$$;

REVOKE ALL ON FUNCTION symphony.ops_participant_summary(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.ops_participant_summary(text)
    TO symphony_control, symphony_readonly;
