-- I8 and I9 of an incremental audit read only the items in its scope.
--
-- Why: the routine audit (`audit verify --since-checkpoint`, and `--since`) computes the items
-- it checks once, as an array, and every check in queries.sql probes its tables by it. I8
-- and I9 run as the owner (the auditor may not read sequence numbers or lease tokens), and
-- their functions (audit_sequence_violations, audit_lease_violations) scope by time through
-- `p_since IS NULL OR x IN (SELECT ... FROM audit_scope(p_since))`, which is planned as a scan
-- of the whole ledger (and registry) with the scope as a filter. At 1M ledger rows they took
-- 395 and 363 ms of a 1.5 s routine audit (42 ms in all at 10k rows).
--
-- * audit_sequence_violations_in(p_scope, p_limit): I8 for the items of p_scope, each probed
--   through the registry's (participant_id, sequence_id) key: a number below 1, another item
--   with the same number (DUPLICATE_SEQUENCE), no item with the number just below
--   (SEQUENCE_GAP: numbers run 1, 2, 3, ... per participant, so an item n > 1 has an n - 1),
--   a participant whose highest number is ahead of its allocator (ALLOCATOR_BEHIND: read from
--   the key's last entry), a pending row whose number is not its registry's. These are the
--   full function's problems on the items in scope; a gap or a duplicate that touches no item
--   in scope is the full audit's (as any untouched history is).
-- * audit_lease_violations_in(p_scope, p_limit): I9 with the full function's body (as 0023
--   left it: a CANCELED row holds no lease), its rows restricted to the items of p_scope (a
--   lease token reused across the scope and older history is the full audit's). Keep it in
--   step with audit_lease_violations.
-- * The full audit keeps calling the old functions (p_since NULL): unchanged.
--
-- Both are SECURITY DEFINER with a pinned search_path, return only ids and problem codes like
-- the functions they mirror, and only the auditor may run them.

SET LOCAL ROLE symphony_owner;

CREATE FUNCTION symphony.audit_sequence_violations_in(
    p_scope uuid[],
    p_limit integer DEFAULT 100
) RETURNS TABLE (
    outbox_id      uuid,
    participant_id text,
    problem        text,
    total          bigint
)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    WITH items AS (
        SELECT r.outbox_id, r.participant_id, r.sequence_id
          FROM payment_instruction_registry r
         WHERE r.outbox_id = ANY (p_scope)
    ),
    violations AS (
        SELECT i.outbox_id, i.participant_id,
               CASE
                   WHEN i.sequence_id < 1 THEN 'SEQUENCE_NOT_POSITIVE'
                   WHEN EXISTS (SELECT 1 FROM payment_instruction_registry o
                                 WHERE o.participant_id = i.participant_id
                                   AND o.sequence_id = i.sequence_id
                                   AND o.outbox_id <> i.outbox_id)
                       THEN 'DUPLICATE_SEQUENCE'
                   WHEN i.sequence_id > 1
                        AND NOT EXISTS (SELECT 1 FROM payment_instruction_registry o
                                         WHERE o.participant_id = i.participant_id
                                           AND o.sequence_id = i.sequence_id - 1)
                       THEN 'SEQUENCE_GAP'
               END AS problem
          FROM items i
        UNION ALL
        SELECT NULL::uuid, m.participant_id, 'ALLOCATOR_BEHIND'
          FROM (SELECT q.participant_id,
                       (SELECT max(o.sequence_id) FROM payment_instruction_registry o
                         WHERE o.participant_id = q.participant_id) AS top
                  FROM (SELECT DISTINCT i.participant_id FROM items i) q) m
          LEFT JOIN participant_outbox_sequences s ON s.participant_id = m.participant_id
         WHERE s.last_sequence_id IS NULL OR s.last_sequence_id < m.top
        UNION ALL
        SELECT p.outbox_id, p.participant_id, 'PENDING_SEQUENCE_MISMATCH'
          FROM payment_outbox_pending p
          JOIN payment_instruction_registry r ON r.outbox_id = p.outbox_id
         WHERE (r.sequence_id <> p.sequence_id OR r.participant_id <> p.participant_id)
           AND p.outbox_id = ANY (p_scope)
    )
    SELECT v.outbox_id, v.participant_id, v.problem, count(*) OVER () AS total
      FROM violations v
     WHERE v.problem IS NOT NULL
     ORDER BY v.participant_id, v.outbox_id
     LIMIT p_limit
$$;

CREATE FUNCTION symphony.audit_lease_violations_in(
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

RESET ROLE;

REVOKE ALL ON FUNCTION
    symphony.audit_sequence_violations_in(uuid[], integer),
    symphony.audit_lease_violations_in(uuid[], integer)
    FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    symphony.audit_sequence_violations_in(uuid[], integer),
    symphony.audit_lease_violations_in(uuid[], integer)
    TO symphony_auditor;
