-- symphony.audit_sequence_violations: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0009_tamper_evident_ledger.sql.

-- I8 on what the auditor may not read: a participant's sequence numbers are unique, dense
-- from 1 (the allocator's row lock hands them out one by one, in the enqueue's transaction),
-- never ahead of the allocator, and the pending row keeps its registry's number. Only the
-- item, its participant and the problem come back: no sequence number, no volume.
CREATE OR REPLACE FUNCTION symphony.audit_sequence_violations(
    p_since timestamptz DEFAULT NULL,
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
    WITH participants_in_scope AS (
        SELECT DISTINCT r.participant_id
          FROM payment_instruction_registry r
         WHERE p_since IS NULL OR r.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s)
    ),
    ordered AS (
        SELECT r.outbox_id, r.participant_id, r.sequence_id,
               lag(r.sequence_id) OVER w AS previous_sequence_id
          FROM payment_instruction_registry r
         WHERE p_since IS NULL
            OR r.participant_id IN (SELECT q.participant_id FROM participants_in_scope q)
        WINDOW w AS (PARTITION BY r.participant_id ORDER BY r.sequence_id, r.outbox_id)
    ),
    violations AS (
        SELECT o.outbox_id, o.participant_id,
               CASE
                   WHEN o.sequence_id < 1 THEN 'SEQUENCE_NOT_POSITIVE'
                   WHEN o.sequence_id = o.previous_sequence_id THEN 'DUPLICATE_SEQUENCE'
                   WHEN o.sequence_id <> coalesce(o.previous_sequence_id, 0) + 1
                       THEN 'SEQUENCE_GAP'
               END AS problem
          FROM ordered o
        UNION ALL
        SELECT NULL::uuid, m.participant_id, 'ALLOCATOR_BEHIND'
          FROM (SELECT o.participant_id, max(o.sequence_id) AS top
                  FROM ordered o GROUP BY o.participant_id) m
          LEFT JOIN participant_outbox_sequences s ON s.participant_id = m.participant_id
         WHERE s.last_sequence_id IS NULL OR s.last_sequence_id < m.top
        UNION ALL
        SELECT p.outbox_id, p.participant_id, 'PENDING_SEQUENCE_MISMATCH'
          FROM payment_outbox_pending p
          JOIN payment_instruction_registry r ON r.outbox_id = p.outbox_id
         WHERE (r.sequence_id <> p.sequence_id OR r.participant_id <> p.participant_id)
           AND (p_since IS NULL OR p.outbox_id IN (SELECT s.outbox_id FROM audit_scope(p_since) s))
    )
    SELECT v.outbox_id, v.participant_id, v.problem, count(*) OVER () AS total
      FROM violations v
     WHERE v.problem IS NOT NULL
     ORDER BY v.participant_id, v.outbox_id
     LIMIT p_limit
$$;

REVOKE ALL ON FUNCTION symphony.audit_sequence_violations(timestamp with time zone, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.audit_sequence_violations(timestamp with time zone, integer)
    TO symphony_auditor;
