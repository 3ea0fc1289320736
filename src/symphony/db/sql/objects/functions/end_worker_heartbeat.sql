-- symphony.end_worker_heartbeat: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

-- A worker that stops cleanly leaves the fleet at once (its buckets show as uncovered if no
-- other live worker has them: that is the truth).
CREATE OR REPLACE FUNCTION symphony.end_worker_heartbeat(
    p_worker_id text
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM symphony_ops.worker_heartbeats h WHERE h.worker_id = p_worker_id;
    RETURN FOUND;
END
$$;

REVOKE ALL ON FUNCTION symphony.end_worker_heartbeat(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.end_worker_heartbeat(text)
    TO symphony_executor;
