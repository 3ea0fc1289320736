-- symphony.enqueue_check_input: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0013_destination_characters.sql.

CREATE OR REPLACE FUNCTION symphony.enqueue_check_input(
    p_instruction_id  text,
    p_idempotency_key text,
    p_participant_id  text,
    p_rail_type       text,
    p_payload         jsonb
) RETURNS void
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_amount      jsonb;
    v_amount_text text;
    v_amount_num  numeric;
    v_currency    text;
    v_minor_units integer;
    v_metadata    jsonb;
    v_depth       integer;
BEGIN
    -- Validation: each failure has its own SQLSTATE so a client can act on it.
    IF p_instruction_id IS NULL OR p_instruction_id !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' THEN
        RAISE EXCEPTION 'instruction_id must be 1-128 letters, digits, ".", "_", ":" or "-"'
            USING ERRCODE = 'SY011', CONSTRAINT = 'enqueue_instruction_id';
    END IF;
    IF p_idempotency_key IS NULL OR p_idempotency_key !~ '^[!-~]{1,255}$' THEN
        RAISE EXCEPTION 'idempotency_key must be 1-255 printable ASCII characters'
            USING ERRCODE = 'SY012', CONSTRAINT = 'enqueue_idempotency_key';
    END IF;
    IF p_participant_id IS NULL OR p_participant_id !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$' THEN
        RAISE EXCEPTION 'participant_id must be 1-64 letters, digits, ".", "_", ":" or "-"'
            USING ERRCODE = 'SY013', CONSTRAINT = 'enqueue_participant_id';
    END IF;
    -- Read without a lock here (this runs in a read-only subtransaction); the batch takes the
    -- FOR SHARE lock afterwards and checks again, as enqueue_payment_outbox does.
    PERFORM 1 FROM participants pt
      WHERE pt.participant_id = p_participant_id AND pt.status = 'ACTIVE';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the participant is not registered or not active'
            USING ERRCODE = 'SY030', CONSTRAINT = 'enqueue_participant_active';
    END IF;
    IF p_rail_type IS NULL OR NOT EXISTS (
        SELECT 1 FROM payment_rails r WHERE r.rail_type = p_rail_type AND r.enabled
    ) THEN
        RAISE EXCEPTION 'rail_type is not a known, enabled payment rail'
            USING ERRCODE = 'SY014', CONSTRAINT = 'enqueue_rail_type';
    END IF;
    IF p_payload IS NULL OR jsonb_typeof(p_payload) <> 'object' THEN
        RAISE EXCEPTION 'payload must be a JSON object'
            USING ERRCODE = 'SY015', CONSTRAINT = 'enqueue_payload_object';
    END IF;
    IF octet_length(p_payload::text) > 16384 THEN
        RAISE EXCEPTION 'payload must be at most 16384 bytes'
            USING ERRCODE = 'SY019', CONSTRAINT = 'enqueue_payload_size';
    END IF;
    -- Nesting depth, walked breadth-first and cut off just past the limit: the size bound
    -- above keeps the walk small, and readers downstream (rails, Python's json) have
    -- recursion limits of their own.
    WITH RECURSIVE walk(v, depth) AS (
        SELECT p_payload, 1
        UNION ALL
        SELECT c.value, w.depth + 1
          FROM walk w
          CROSS JOIN LATERAL (
              SELECT e.value
                FROM jsonb_each(CASE WHEN jsonb_typeof(w.v) = 'object' THEN w.v
                                     ELSE '{}'::jsonb END) e
              UNION ALL
              SELECT a.value
                FROM jsonb_array_elements(CASE WHEN jsonb_typeof(w.v) = 'array' THEN w.v
                                               ELSE '[]'::jsonb END) a
          ) c
         WHERE w.depth <= 32
           AND jsonb_typeof(c.value) IN ('object', 'array')
    )
    SELECT max(w.depth) INTO v_depth FROM walk w;
    IF v_depth > 32 THEN
        RAISE EXCEPTION 'payload must not be nested deeper than 32 levels'
            USING ERRCODE = 'SY019', CONSTRAINT = 'enqueue_payload_depth';
    END IF;
    -- Amounts are decimal strings: positive, at most 15 integer digits and 8 decimals. A JSON
    -- number is refused because JSON readers (Python's among them) turn it into a binary
    -- float, and no rail may see a rounded amount.
    v_amount := p_payload -> 'amount';
    IF v_amount IS NULL
       OR jsonb_typeof(v_amount) <> 'string'
       OR (v_amount #>> '{}') !~ '^[0-9]{1,15}(\.[0-9]{1,8})?$' THEN
        RAISE EXCEPTION 'payload.amount must be a decimal string, positive, with at most 8 '
                        'decimals'
            USING ERRCODE = 'SY016', CONSTRAINT = 'enqueue_payload_amount';
    END IF;
    v_amount_text := v_amount #>> '{}';
    v_amount_num := v_amount_text::numeric;
    IF v_amount_num <= 0 THEN
        RAISE EXCEPTION 'payload.amount must be greater than zero'
            USING ERRCODE = 'SY016', CONSTRAINT = 'enqueue_payload_amount';
    END IF;
    IF jsonb_typeof(p_payload -> 'currency') IS DISTINCT FROM 'string'
       OR (p_payload ->> 'currency') !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION 'payload.currency must be a 3-letter ISO 4217 code'
            USING ERRCODE = 'SY017', CONSTRAINT = 'enqueue_payload_currency';
    END IF;
    v_currency := p_payload ->> 'currency';
    SELECT c.minor_units INTO v_minor_units FROM currencies c WHERE c.code = v_currency;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payload.currency is not a currency payments can be made in'
            USING ERRCODE = 'SY017', CONSTRAINT = 'enqueue_payload_currency_known';
    END IF;
    -- Counted on the string, not the value: "1.50" is two decimals. A rail that takes JPY in
    -- whole yen must not be handed "1.5", nor USD "1.005".
    IF char_length(coalesce(substring(v_amount_text FROM '\.([0-9]+)$'), '')) > v_minor_units THEN
        RAISE EXCEPTION 'payload.amount has more decimals than the currency has minor units'
            USING ERRCODE = 'SY016', CONSTRAINT = 'enqueue_payload_amount_minor_units';
    END IF;
    IF jsonb_typeof(p_payload -> 'destination') IS DISTINCT FROM 'string'
       OR char_length(p_payload ->> 'destination') NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'payload.destination must be a non-empty string of at most 256 characters'
            USING ERRCODE = 'SY018', CONSTRAINT = 'enqueue_payload_destination';
    END IF;
    -- Controls, format characters (bidirectional marks, zero-width characters, the soft
    -- hyphen, the BOM, tags), line and paragraph separators, private use and unassigned
    -- code points: characters that show nothing, or something else than what the rail
    -- receives (see destination_characters_ok).
    IF NOT destination_characters_ok(p_payload ->> 'destination') THEN
        RAISE EXCEPTION 'payload.destination must not contain control, format, separator, '
                        'private-use or unassigned characters'
            USING ERRCODE = 'SY018', CONSTRAINT = 'enqueue_payload_destination_characters';
    END IF;
    -- Optional metadata: a small flat object of short strings, nothing a rail must parse.
    v_metadata := p_payload -> 'metadata';
    IF v_metadata IS NOT NULL AND (
           jsonb_typeof(v_metadata) <> 'object'
        OR (SELECT count(*) FROM jsonb_each(v_metadata)) > 20
        OR EXISTS (
            SELECT 1 FROM jsonb_each(v_metadata) m
             WHERE char_length(m.key) NOT BETWEEN 1 AND 40
                OR jsonb_typeof(m.value) <> 'string'
                OR char_length(m.value #>> '{}') > 500)
    ) THEN
        RAISE EXCEPTION 'payload.metadata must be an object of at most 20 keys (1-40 '
                        'characters) with string values of at most 500 characters'
            USING ERRCODE = 'SY015', CONSTRAINT = 'enqueue_payload_metadata';
    END IF;

END
$$;

REVOKE ALL ON FUNCTION symphony.enqueue_check_input(text, text, text, text, jsonb)
    FROM PUBLIC;
