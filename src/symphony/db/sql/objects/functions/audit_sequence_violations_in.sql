-- symphony.audit_sequence_violations_in: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0025_audit_scope_arrays.sql.

CREATE OR REPLACE FUNCTION symphony.audit_sequence_violations_in(
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

REVOKE ALL ON FUNCTION symphony.audit_sequence_violations_in(uuid[], integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.audit_sequence_violations_in(uuid[], integer)
    TO symphony_auditor;
