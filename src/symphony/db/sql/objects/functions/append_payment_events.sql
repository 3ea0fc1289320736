-- symphony.append_payment_events: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0016_payment_events.sql.

-- Numbers and appends the given events (element i: participant, item, type), in the arrays'
-- order within each participant. The counters are locked in participant order (see the
-- header); each stays locked until the caller's transaction ends. Owner-only: the triggers
-- below are its only callers.
CREATE OR REPLACE FUNCTION symphony.append_payment_events(
    p_participant_ids text[],
    p_outbox_ids      uuid[],
    p_event_types     text[]
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_pid   text;
    v_count integer;
    v_last  bigint;
    v_pids  text[] := '{}';
    v_lasts bigint[] := '{}';
BEGIN
    IF coalesce(cardinality(p_participant_ids), 0) = 0 THEN
        RETURN 0;
    END IF;
    FOR v_pid, v_count IN
        SELECT u.pid, count(*)::integer
          FROM unnest(p_participant_ids) AS u(pid)
         GROUP BY u.pid
         ORDER BY u.pid COLLATE "C"
    LOOP
        INSERT INTO participant_event_sequences AS s (participant_id, last_event_seq)
        VALUES (v_pid, v_count)
        ON CONFLICT ON CONSTRAINT participant_event_sequences_pkey
        DO UPDATE SET last_event_seq = s.last_event_seq + v_count
        RETURNING s.last_event_seq INTO v_last;
        v_pids := v_pids || v_pid;
        v_lasts := v_lasts || v_last;
    END LOOP;

    INSERT INTO payment_events (participant_id, event_seq, event_type, outbox_id, payload)
    SELECT e.pid,
           c.last_seq - count(*) OVER (PARTITION BY e.pid)
               + row_number() OVER (PARTITION BY e.pid ORDER BY e.ord),
           e.typ, e.oid, b.payload
      FROM unnest(p_participant_ids, p_outbox_ids, p_event_types) WITH ORDINALITY
           AS e(pid, oid, typ, ord)
      JOIN unnest(v_pids, v_lasts) AS c(pid, last_seq) ON c.pid = e.pid
      CROSS JOIN LATERAL payment_event_payload(e.pid, e.oid) b;
    RETURN cardinality(p_participant_ids);
END
$$;

REVOKE ALL ON FUNCTION symphony.append_payment_events(text[], uuid[], text[])
    FROM PUBLIC;
