-- symphony.enqueue_payment_outbox_batch: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0013_destination_characters.sql.

CREATE OR REPLACE FUNCTION symphony.enqueue_payment_outbox_batch(
    p_instruction_ids   text[],
    p_idempotency_keys  text[],
    p_participant_ids   text[],
    p_rail_types        text[],
    p_payloads          jsonb[],
    p_wake_after_commit boolean DEFAULT false
) RETURNS TABLE (
    item             integer,
    outbox_id        uuid,
    sequence_id      bigint,
    state            text,
    created          boolean,
    created_at       timestamptz,
    error_sqlstate   text,
    error_constraint text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    n        integer := coalesce(cardinality(p_instruction_ids), 0);
    i        integer;
    v_key    bigint;
    v_slow   integer[];
    v_locked text[];
    r_err    text[];
    r_con    text[];
    e_state  text;
    e_con    text;
BEGIN
    IF n < 1 OR n > 1000
       OR coalesce(cardinality(p_idempotency_keys), 0) <> n
       OR coalesce(cardinality(p_participant_ids), 0) <> n
       OR coalesce(cardinality(p_rail_types), 0) <> n
       OR coalesce(cardinality(p_payloads), 0) <> n THEN
        RAISE EXCEPTION 'a batch holds 1-1000 items, each with every field'
            USING ERRCODE = 'SY021', CONSTRAINT = 'enqueue_batch_size';
    END IF;
    IF p_wake_after_commit THEN
        -- Transaction-local (and undone when this function returns): the pending table's
        -- NOTIFY trigger stays silent for this batch's insert.
        PERFORM set_config('symphony.wake_after_commit', 'on', true);
    END IF;
    r_err := array_fill(NULL::text, ARRAY[n]);
    r_con := array_fill(NULL::text, ARRAY[n]);

    -- 1. Validation. One set-based pass proves the plain items valid: every check of
    --    enqueue_check_input, for payloads whose only nested value is a flat metadata object
    --    (so the depth limit cannot be reached). Anything it cannot prove valid goes through
    --    enqueue_check_input itself, in a subtransaction that writes nothing, and gets exactly
    --    the refusal enqueue_payment_outbox would make (or passes, if merely not plain).
    SELECT coalesce(array_agg(u.ord::integer ORDER BY u.ord), '{}') INTO v_slow
      FROM unnest(p_instruction_ids, p_idempotency_keys, p_participant_ids, p_rail_types,
                  p_payloads) WITH ORDINALITY AS u(iid, ikey, pid, rail, payload, ord)
     WHERE NOT CASE
        WHEN u.iid IS NULL OR u.iid !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN false
        WHEN u.ikey IS NULL OR u.ikey !~ '^[!-~]{1,255}$' THEN false
        WHEN u.pid IS NULL OR u.pid !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$' THEN false
        WHEN u.rail IS NULL OR NOT EXISTS (
                 SELECT 1 FROM payment_rails r WHERE r.rail_type = u.rail AND r.enabled)
            THEN false
        WHEN u.payload IS NULL OR jsonb_typeof(u.payload) <> 'object' THEN false
        WHEN octet_length(u.payload::text) > 16384 THEN false
        WHEN EXISTS (SELECT 1 FROM jsonb_each(u.payload) e
                      WHERE e.key <> 'metadata'
                        AND jsonb_typeof(e.value) IN ('object', 'array')) THEN false
        WHEN jsonb_typeof(u.payload -> 'amount') IS DISTINCT FROM 'string'
             OR (u.payload ->> 'amount') !~ '^[0-9]{1,15}(\.[0-9]{1,8})?$' THEN false
        WHEN (u.payload ->> 'amount')::numeric <= 0 THEN false
        WHEN jsonb_typeof(u.payload -> 'currency') IS DISTINCT FROM 'string'
             OR (u.payload ->> 'currency') !~ '^[A-Z]{3}$' THEN false
        WHEN NOT EXISTS (
                 SELECT 1 FROM currencies c
                  WHERE c.code = u.payload ->> 'currency'
                    AND char_length(coalesce(substring(u.payload ->> 'amount'
                                                       FROM '\.([0-9]+)$'), ''))
                        <= c.minor_units) THEN false
        WHEN jsonb_typeof(u.payload -> 'destination') IS DISTINCT FROM 'string'
             OR char_length(u.payload ->> 'destination') NOT BETWEEN 1 AND 256 THEN false
        WHEN NOT destination_characters_ok(u.payload ->> 'destination') THEN false
        WHEN u.payload -> 'metadata' IS NULL THEN true
        WHEN jsonb_typeof(u.payload -> 'metadata') <> 'object' THEN false
        WHEN (SELECT count(*) FROM jsonb_each(u.payload -> 'metadata')) > 20 THEN false
        WHEN EXISTS (SELECT 1 FROM jsonb_each(u.payload -> 'metadata') m
                      WHERE char_length(m.key) NOT BETWEEN 1 AND 40
                         OR jsonb_typeof(m.value) <> 'string'
                         OR char_length(m.value #>> '{}') > 500) THEN false
        ELSE true
     END;
    FOREACH i IN ARRAY v_slow LOOP
        BEGIN
            PERFORM enqueue_check_input(p_instruction_ids[i], p_idempotency_keys[i],
                                        p_participant_ids[i], p_rail_types[i], p_payloads[i]);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_con = CONSTRAINT_NAME;
            r_err[i] := e_state;
            r_con[i] := nullif(e_con, '');
        END;
    END LOOP;

    -- 2. Participants FOR SHARE, in participant order; one revoked meanwhile refuses its items.
    SELECT coalesce(array_agg(l.participant_id), '{}') INTO v_locked
      FROM (SELECT pt.participant_id
              FROM participants pt
             WHERE pt.participant_id IN (
                       SELECT DISTINCT u.pid
                         FROM unnest(p_participant_ids, r_err) AS u(pid, err)
                        WHERE u.err IS NULL)
               AND pt.status = 'ACTIVE'
             ORDER BY pt.participant_id
               FOR SHARE) l;
    FOR i IN 1..n LOOP
        IF r_err[i] IS NULL AND NOT (p_participant_ids[i] = ANY (v_locked)) THEN
            r_err[i] := 'SY030';
            r_con[i] := 'enqueue_participant_active';
        END IF;
    END LOOP;

    -- 3. The triples' advisory locks (the same key as enqueue_payment_outbox), by key.
    FOR v_key IN
        SELECT DISTINCT hashtextextended(u.pid || chr(31) || u.iid || chr(31) || u.ikey, 7301) AS k
          FROM unnest(p_participant_ids, p_instruction_ids, p_idempotency_keys, r_err)
               AS u(pid, iid, ikey, err)
         WHERE u.err IS NULL
         ORDER BY k
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    -- 4. Set-based: the first occurrence of each triple is either known (replayed, or SY100
    --    when the rail or payload differ) or fresh; the fresh ones take their participant's
    --    next numbers in the batch's order (I8: one counter update per participant, in
    --    participant order, its row locked to commit), then registry and queue rows in one
    --    statement each: one NOTIFY (or none, see above) for the whole batch. Every other
    --    occurrence is compared with its first, as a second enqueue would be.
    RETURN QUERY
    WITH input AS (
        SELECT u.ord::integer AS ord, u.iid, u.ikey, u.pid, u.rail, u.payload, u.err, u.con
          FROM unnest(p_instruction_ids, p_idempotency_keys, p_participant_ids, p_rail_types,
                      p_payloads, r_err, r_con)
               WITH ORDINALITY AS u(iid, ikey, pid, rail, payload, err, con, ord)
    ), firsts AS (
        SELECT DISTINCT ON (i.pid, i.iid, i.ikey) i.ord, i.pid, i.iid, i.ikey, i.rail, i.payload
          FROM input i
         WHERE i.err IS NULL
         ORDER BY i.pid, i.iid, i.ikey, i.ord
    ), known AS (
        SELECT f.ord AS first_ord, r.outbox_id, r.sequence_id, r.rail_type, r.payload,
               r.created_at
          FROM firsts f
          JOIN payment_instruction_registry r
            ON r.participant_id = f.pid AND r.instruction_id = f.iid
           AND r.idempotency_key = f.ikey
    ), fresh AS (
        SELECT f.*,
               row_number() OVER (PARTITION BY f.pid ORDER BY f.ord) AS k,
               count(*) OVER (PARTITION BY f.pid) AS per_pid
          FROM firsts f
         WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.first_ord = f.ord)
    ), counters AS (
        INSERT INTO participant_outbox_sequences AS s (participant_id, last_sequence_id)
        SELECT c.pid, c.n
          FROM (SELECT fr.pid, count(*) AS n FROM fresh fr GROUP BY fr.pid) c
         ORDER BY c.pid
        ON CONFLICT ON CONSTRAINT participant_outbox_sequences_pkey
        DO UPDATE SET last_sequence_id = s.last_sequence_id + EXCLUDED.last_sequence_id,
                      updated_at = now()
        RETURNING s.participant_id, s.last_sequence_id
    ), numbered AS MATERIALIZED (
        SELECT fr.ord AS first_ord, fr.pid, fr.iid, fr.ikey, fr.rail, fr.payload,
               gen_random_uuid() AS new_id,
               c.last_sequence_id - fr.per_pid + fr.k AS seq
          FROM fresh fr
          JOIN counters c ON c.participant_id = fr.pid
    ), reg AS (
        INSERT INTO payment_instruction_registry AS r
            (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id,
             rail_type, payload)
        SELECT nb.iid, nb.ikey, nb.new_id, nb.pid, nb.seq, nb.rail, nb.payload
          FROM numbered nb
         ORDER BY nb.pid, nb.seq
        RETURNING r.outbox_id, r.created_at
    ), pend AS (
        INSERT INTO payment_outbox_pending AS p (outbox_id, participant_id, sequence_id)
        SELECT nb.new_id, nb.pid, nb.seq FROM numbered nb
        RETURNING p.outbox_id
    ), refs AS (
        SELECT kn.first_ord, kn.outbox_id, kn.sequence_id, kn.rail_type, kn.payload,
               kn.created_at, false AS is_new
          FROM known kn
        UNION ALL
        SELECT nb.first_ord, nb.new_id, nb.seq, nb.rail, nb.payload, rg.created_at, true
          FROM numbered nb
          JOIN reg rg ON rg.outbox_id = nb.new_id
    ), matched AS (
        SELECT i.ord, i.err, i.con, i.rail, i.payload AS given, x.*
          FROM input i
          LEFT JOIN firsts f ON i.err IS NULL AND f.pid = i.pid AND f.iid = i.iid
                            AND f.ikey = i.ikey
          LEFT JOIN refs x ON x.first_ord = f.ord
    )
    SELECT m.ord,
           CASE WHEN m.err IS NULL AND m.rail_type = m.rail AND m.payload = m.given
                THEN m.outbox_id END,
           CASE WHEN m.err IS NULL AND m.rail_type = m.rail AND m.payload = m.given
                THEN m.sequence_id END,
           CASE WHEN m.err IS NOT NULL OR m.rail_type <> m.rail OR m.payload <> m.given
                    THEN NULL
                WHEN m.is_new THEN 'PENDING'
                ELSE coalesce(
                    (SELECT CASE WHEN p.lease_token IS NULL THEN 'PENDING' ELSE 'DISPATCHING' END
                       FROM payment_outbox_pending p
                      WHERE p.outbox_id = m.outbox_id),
                    (SELECT a.state::text
                       FROM payment_outbox_attempts a
                      WHERE a.outbox_id = m.outbox_id
                        AND a.state IN ('DISPATCHED', 'FAILED')),
                    'PENDING')
           END,
           CASE WHEN m.err IS NULL AND m.rail_type = m.rail AND m.payload = m.given
                THEN m.is_new AND m.ord = m.first_ord END,
           CASE WHEN m.err IS NULL AND m.rail_type = m.rail AND m.payload = m.given
                THEN m.created_at END,
           CASE WHEN m.err IS NOT NULL THEN m.err
                WHEN m.rail_type <> m.rail OR m.payload <> m.given THEN 'SY100' END,
           CASE WHEN m.err IS NOT NULL THEN m.con
                WHEN m.rail_type <> m.rail OR m.payload <> m.given
                    THEN 'payment_instruction_registry_same_request' END
      FROM matched m
     ORDER BY m.ord;
END
$$;

REVOKE ALL ON FUNCTION symphony.enqueue_payment_outbox_batch(text[], text[], text[], text[], jsonb[], boolean)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.enqueue_payment_outbox_batch(text[], text[], text[], text[], jsonb[], boolean)
    TO symphony_ingest;
