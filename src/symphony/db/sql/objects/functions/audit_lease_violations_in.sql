-- symphony.audit_lease_violations_in: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0025_audit_scope_arrays.sql.

CREATE OR REPLACE FUNCTION symphony.audit_lease_violations_in(
    p_scope uuid[],
    p_limit integer DEFAULT 100
) RETURNS TABLE (
    outbox_id  uuid,
    attempt_no integer,
    problem    text,
    total      bigint
)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    WITH rows_in_scope AS (
        SELECT a.outbox_id, a.attempt_no, a.state, a.lease_token, a.lease_digest,
               lag(a.state) OVER w AS previous_state,
               lag(a.attempt_no) OVER w AS previous_attempt_no,
               lag(a.lease_token) OVER w AS previous_token,
               -- The item's newest row, from the same window (no second sort).
               (lead(a.attempt_no) OVER w IS NULL) AS is_last
          FROM payment_outbox_attempts a
         WHERE a.outbox_id = ANY (p_scope)
        WINDOW w AS (PARTITION BY a.outbox_id ORDER BY a.attempt_no)
    ),
    violations AS (
        SELECT x.outbox_id, x.attempt_no,
               CASE
                   WHEN x.state = 'DISPATCHING' AND x.lease_token IS NULL
                       THEN 'DISPATCHING_WITHOUT_LEASE'
                   -- A cancellation is no outcome of a dispatch: it holds no lease.
                   WHEN x.state = 'CANCELED' AND x.lease_token IS NOT NULL
                       THEN 'CANCELED_WITH_LEASE'
                   WHEN x.state NOT IN ('DISPATCHING', 'CANCELED')
                        AND (x.previous_state IS DISTINCT FROM 'DISPATCHING'
                             OR x.previous_attempt_no <> x.attempt_no - 1)
                       THEN 'NO_PRECEDING_DISPATCHING'
                   WHEN x.state NOT IN ('DISPATCHING', 'CANCELED')
                        AND (x.lease_token IS NULL OR x.lease_token <> x.previous_token)
                       THEN 'LEASE_MISMATCH'
                   WHEN x.lease_digest IS DISTINCT FROM sha256(uuid_send(x.lease_token))
                       THEN 'LEASE_DIGEST_MISMATCH'
               END AS problem
          FROM rows_in_scope x
        UNION ALL
        SELECT min(x.outbox_id::text)::uuid, NULL::integer, 'LEASE_TOKEN_REUSED'
          FROM rows_in_scope x
         WHERE x.state = 'DISPATCHING' AND x.lease_token IS NOT NULL
         GROUP BY x.lease_token
        HAVING count(*) > 1
        UNION ALL
        SELECT p.outbox_id, x.attempt_no,
               CASE
                   WHEN p.lease_token IS NOT NULL AND (x.state IS DISTINCT FROM 'DISPATCHING'
                        OR x.lease_token IS DISTINCT FROM p.lease_token)
                       THEN 'LIVE_LEASE_NOT_IN_LEDGER'
                   WHEN p.lease_token IS NULL AND x.state = 'DISPATCHING'
                       THEN 'OPEN_DISPATCHING_WITHOUT_LEASE'
               END
          FROM payment_outbox_pending p
          LEFT JOIN rows_in_scope x ON x.outbox_id = p.outbox_id AND x.is_last
         WHERE p.outbox_id = ANY (p_scope)
    )
    SELECT v.outbox_id, v.attempt_no, v.problem, count(*) OVER () AS total
      FROM violations v
     WHERE v.problem IS NOT NULL
     ORDER BY v.outbox_id, v.attempt_no
     LIMIT p_limit
$$;

REVOKE ALL ON FUNCTION symphony.audit_lease_violations_in(uuid[], integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.audit_lease_violations_in(uuid[], integer)
    TO symphony_auditor;
