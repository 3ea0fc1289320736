-- symphony.is_legal_transition: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0023_cancellation.sql.

CREATE OR REPLACE FUNCTION symphony.is_legal_transition(
    p_previous symphony.attempt_state,
    p_next symphony.attempt_state
) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_previous IS NULL THEN p_next IN ('DISPATCHING', 'CANCELED')
        WHEN p_previous = 'DISPATCHING'
            THEN p_next IN ('DISPATCHED', 'RETRYABLE', 'FAILED', 'ZOMBIE_REQUEUE')
        WHEN p_previous = 'RETRYABLE' THEN p_next IN ('DISPATCHING', 'CANCELED')
        WHEN p_previous = 'ZOMBIE_REQUEUE' THEN p_next = 'DISPATCHING'
        ELSE false  -- nothing follows DISPATCHED, FAILED or CANCELED
    END
$$;

REVOKE ALL ON FUNCTION symphony.is_legal_transition(symphony.attempt_state, symphony.attempt_state)
    FROM PUBLIC;
