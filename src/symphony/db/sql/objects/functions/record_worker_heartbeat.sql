-- symphony.record_worker_heartbeat: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

-- A worker's heartbeat: one upsert per heartbeat interval. The database's clock stamps it
-- (workers' clocks may disagree). Rows of workers silent for a day are removed on the way:
-- the fleet shows a dead worker as stale for a day, then forgets it.
CREATE OR REPLACE FUNCTION symphony.record_worker_heartbeat(
    p_worker_id           text,
    p_bucket_from         integer,
    p_bucket_to           integer,
    p_version             text,
    p_started_at          timestamptz,
    p_last_cycle_at       timestamptz,
    p_in_flight           integer,
    p_stale_after_seconds integer
) RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'heartbeat_worker_id';
    END IF;
    IF p_bucket_from IS NULL OR p_bucket_to IS NULL OR p_bucket_from NOT BETWEEN 0 AND 255
       OR p_bucket_to NOT BETWEEN p_bucket_from AND 255 THEN
        RAISE EXCEPTION 'a bucket range is FROM-TO with 0 <= FROM <= TO <= 255'
            USING ERRCODE = 'SY026', CONSTRAINT = 'heartbeat_bucket_range';
    END IF;
    IF p_version IS NULL OR char_length(p_version) NOT BETWEEN 1 AND 64
       OR p_started_at IS NULL OR p_in_flight IS NULL OR p_in_flight < 0
       OR p_stale_after_seconds IS NULL OR p_stale_after_seconds NOT BETWEEN 1 AND 3600 THEN
        RAISE EXCEPTION 'a heartbeat needs a version (1-64 characters), a start time, an '
                        'in-flight count >= 0 and a staleness of 1-3600 s'
            USING ERRCODE = 'SY064', CONSTRAINT = 'heartbeat_fields';
    END IF;
    INSERT INTO symphony_ops.worker_heartbeats AS h
        (worker_id, bucket_from, bucket_to, version, started_at, last_cycle_at, in_flight,
         stale_after_seconds, heartbeat_at)
    VALUES (p_worker_id, p_bucket_from, p_bucket_to, p_version, p_started_at, p_last_cycle_at,
            p_in_flight, p_stale_after_seconds, v_at)
    ON CONFLICT ON CONSTRAINT worker_heartbeats_pkey DO UPDATE
       SET bucket_from = excluded.bucket_from, bucket_to = excluded.bucket_to,
           version = excluded.version, started_at = excluded.started_at,
           last_cycle_at = excluded.last_cycle_at, in_flight = excluded.in_flight,
           stale_after_seconds = excluded.stale_after_seconds,
           heartbeat_at = excluded.heartbeat_at, login = session_user;
    DELETE FROM symphony_ops.worker_heartbeats h
     WHERE h.heartbeat_at < v_at - interval '1 day';
    RETURN v_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.record_worker_heartbeat(text, integer, integer, text, timestamp with time zone, timestamp with time zone, integer, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.record_worker_heartbeat(text, integer, integer, text, timestamp with time zone, timestamp with time zone, integer, integer)
    TO symphony_executor;
