-- 0007 — participants, API tokens, participant-scoped idempotency and reads, stricter input.
--
-- Why:
-- * I1 is scoped to the participant, as payment APIs scope keys to the account: the registry's
--   identity becomes (participant_id, instruction_id, idempotency_key). Two participants may
--   use the same pair; neither waits on the other's lock, shares its sequence or can learn
--   that the other used it. Reusing a triple with another rail or payload stays SY100.
-- * Participants are a table of their own, so the front door can refuse a participant that
--   is unknown or revoked (SY030), and a revocation takes effect on the next request. Their
--   status only moves ACTIVE -> REVOKED, and no row is ever deleted (the registry refers to it).
-- * API tokens are stored as salt + sha256(salt || secret) only. The secret and the hash are
--   computed by the application: the plain secret never reaches the database, so it cannot
--   appear in a server log (log_min_duration_statement logs bind parameters), only a hash
--   that opens nothing over HTTP. No runtime role may read the table; the functions issue,
--   revoke and verify.
-- * The API reads only through participant-scoped functions, so no query of the application
--   can forget the participant filter; they expose no worker id, lease or sequence number.
-- * Input the rails cannot take is refused at the door: unknown or non-currency codes (XTS,
--   XXX, metals), more decimals than the currency has, control and bidirectional-override
--   characters in the destination (an operator reading "ACCT-1<RLO>..." sees another
--   account), payloads nested deeper than 32 levels, and oversized metadata.
-- * readonly and auditor lose sequence_id of the registry: a participant's count of payments
--   is commercial information (as participant_outbox_sequences already was).
-- Existing rows are kept as they are: the key change is a constraint swap, the participants
-- are backfilled from the registry before the foreign keys are added.

SET LOCAL ROLE symphony_owner;

-- participants --------------------------------------------------------------------------------

CREATE TABLE symphony.participants (
    participant_id text        NOT NULL,
    display_name   text        NOT NULL,
    status         text        NOT NULL DEFAULT 'ACTIVE',
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    CONSTRAINT participants_pkey PRIMARY KEY (participant_id),
    CONSTRAINT participants_participant_id_format
        CHECK (participant_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    CONSTRAINT participants_display_name_format
        CHECK (char_length(display_name) BETWEEN 1 AND 200
               AND display_name !~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]'),
    CONSTRAINT participants_status_known CHECK (status IN ('ACTIVE', 'REVOKED')),
    CONSTRAINT participants_revoked_at_matches_status
        CHECK ((status = 'REVOKED') = (revoked_at IS NOT NULL))
);

-- Every participant that already has items, as ACTIVE: nothing that worked yesterday stops.
INSERT INTO symphony.participants (participant_id, display_name, status)
SELECT DISTINCT x.participant_id, x.participant_id, 'ACTIVE'
  FROM (SELECT r.participant_id FROM symphony.payment_instruction_registry r
        UNION
        SELECT s.participant_id FROM symphony.participant_outbox_sequences s) x;

-- API tokens ------------------------------------------------------------------------------------

CREATE TABLE symphony.api_tokens (
    token_id       uuid        NOT NULL,
    kind           text        NOT NULL,
    participant_id text,
    label          text        NOT NULL DEFAULT '',
    secret_salt    bytea       NOT NULL,
    secret_hash    bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    CONSTRAINT api_tokens_pkey PRIMARY KEY (token_id),
    CONSTRAINT api_tokens_kind_known CHECK (kind IN ('PARTICIPANT', 'OPERATOR')),
    CONSTRAINT api_tokens_participant_iff_kind
        CHECK ((kind = 'PARTICIPANT') = (participant_id IS NOT NULL)),
    CONSTRAINT api_tokens_participant_fkey
        FOREIGN KEY (participant_id) REFERENCES symphony.participants (participant_id),
    CONSTRAINT api_tokens_label_format
        CHECK (char_length(label) <= 200
               AND label !~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]'),
    CONSTRAINT api_tokens_salt_length CHECK (octet_length(secret_salt) = 16),
    CONSTRAINT api_tokens_hash_length CHECK (octet_length(secret_hash) = 32)
);

-- revoke_participant revokes the participant's tokens: found by index, not by a scan.
CREATE INDEX api_tokens_participant_idx
    ON symphony.api_tokens (participant_id)
    WHERE participant_id IS NOT NULL;

-- Forward-only rows: a participant goes ACTIVE -> REVOKED once, a token is revoked once, and
-- neither is deleted or rewritten (the registry and the audit trail refer to them).
CREATE FUNCTION symphony.check_access_forward_only() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION '% rows are never removed', TG_TABLE_NAME
            USING ERRCODE = 'P0001', CONSTRAINT = TG_TABLE_NAME || '_append_only';
    END IF;
    IF TG_TABLE_NAME = 'participants' THEN
        IF NEW.participant_id <> OLD.participant_id
           OR NEW.created_at <> OLD.created_at
           OR (OLD.status = 'REVOKED'
               AND (NEW.status <> 'REVOKED' OR NEW.revoked_at <> OLD.revoked_at
                    OR NEW.display_name <> OLD.display_name)) THEN
            RAISE EXCEPTION 'a participant keeps its identity and only moves ACTIVE -> REVOKED'
                USING ERRCODE = 'SY038', CONSTRAINT = 'participants_status_forward_only';
        END IF;
    ELSE
        IF NEW.token_id <> OLD.token_id
           OR NEW.kind <> OLD.kind
           OR NEW.participant_id IS DISTINCT FROM OLD.participant_id
           OR NEW.label <> OLD.label
           OR NEW.secret_salt <> OLD.secret_salt
           OR NEW.secret_hash <> OLD.secret_hash
           OR NEW.created_at <> OLD.created_at
           OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
           OR (OLD.revoked_at IS NULL AND NEW.revoked_at IS NULL) THEN
            RAISE EXCEPTION 'a token can only be revoked, once'
                USING ERRCODE = 'SY038', CONSTRAINT = 'api_tokens_revocation_forward_only';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER participants_forward_only
    BEFORE UPDATE OR DELETE ON symphony.participants
    FOR EACH ROW EXECUTE FUNCTION symphony.check_access_forward_only();
CREATE TRIGGER participants_no_truncate
    BEFORE TRUNCATE ON symphony.participants
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.check_access_forward_only();
CREATE TRIGGER api_tokens_forward_only
    BEFORE UPDATE OR DELETE ON symphony.api_tokens
    FOR EACH ROW EXECUTE FUNCTION symphony.check_access_forward_only();
CREATE TRIGGER api_tokens_no_truncate
    BEFORE TRUNCATE ON symphony.api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.check_access_forward_only();

ALTER TABLE symphony.participants
    ENABLE ALWAYS TRIGGER participants_forward_only,
    ENABLE ALWAYS TRIGGER participants_no_truncate;
ALTER TABLE symphony.api_tokens
    ENABLE ALWAYS TRIGGER api_tokens_forward_only,
    ENABLE ALWAYS TRIGGER api_tokens_no_truncate;

-- the registry: identity per participant ------------------------------------------------------

-- A constraint swap (no row is touched, so the append-only triggers do not fire); the new key
-- is as unique as the old one was, since every existing pair already was unique on its own.
ALTER TABLE symphony.payment_instruction_registry
    DROP CONSTRAINT payment_instruction_registry_pkey;
ALTER TABLE symphony.payment_instruction_registry
    ADD CONSTRAINT payment_instruction_registry_pkey
        PRIMARY KEY (participant_id, instruction_id, idempotency_key);
ALTER TABLE symphony.payment_instruction_registry
    ADD CONSTRAINT payment_instruction_registry_participant_fkey
        FOREIGN KEY (participant_id) REFERENCES symphony.participants (participant_id);
ALTER TABLE symphony.participant_outbox_sequences
    ADD CONSTRAINT participant_outbox_sequences_participant_fkey
        FOREIGN KEY (participant_id) REFERENCES symphony.participants (participant_id);

-- currencies ------------------------------------------------------------------------------------

-- ISO 4217 currencies a payment may be in, with their minor units (decimals). A table rather
-- than a CHECK so operations can add one without a schema change. The X-codes that are not
-- money (XTS testing, XXX no currency, metals, SDR, bond units) are refused by a CHECK so
-- they cannot be added by mistake; XAF, XOF, XCD and XPF are real currencies.
CREATE TABLE symphony.currencies (
    code        text    NOT NULL,
    minor_units integer NOT NULL,
    CONSTRAINT currencies_pkey PRIMARY KEY (code),
    CONSTRAINT currencies_code_format CHECK (code ~ '^[A-Z]{3}$'),
    CONSTRAINT currencies_not_a_non_currency
        CHECK (code !~ '^X' OR code IN ('XAF', 'XOF', 'XCD', 'XPF')),
    CONSTRAINT currencies_minor_units_range CHECK (minor_units BETWEEN 0 AND 4)
);

INSERT INTO symphony.currencies (code, minor_units) VALUES
    ('AED', 2), ('ARS', 2), ('AUD', 2), ('BGN', 2), ('BHD', 3), ('BRL', 2), ('CAD', 2),
    ('CHF', 2), ('CLP', 0), ('CNY', 2), ('COP', 2), ('CZK', 2), ('DKK', 2), ('EGP', 2),
    ('EUR', 2), ('GBP', 2), ('HKD', 2), ('HUF', 2), ('IDR', 2), ('ILS', 2), ('INR', 2),
    ('IQD', 3), ('ISK', 0), ('JOD', 3), ('JPY', 0), ('KES', 2), ('KRW', 0), ('KWD', 3),
    ('LYD', 3), ('MAD', 2), ('MXN', 2), ('MYR', 2), ('NGN', 2), ('NOK', 2), ('NZD', 2),
    ('OMR', 3), ('PEN', 2), ('PHP', 2), ('PKR', 2), ('PLN', 2), ('QAR', 2), ('RON', 2),
    ('SAR', 2), ('SEK', 2), ('SGD', 2), ('THB', 2), ('TND', 3), ('TRY', 2), ('TWD', 2),
    ('UAH', 2), ('UGX', 0), ('USD', 2), ('VND', 0), ('XAF', 0), ('XOF', 0), ('XCD', 2),
    ('XPF', 0), ('ZAR', 2);

-- enqueue ---------------------------------------------------------------------------------------

-- The signature gains created_at (the registry row's), so a replay can answer exactly what
-- the first call answered; a changed result type needs DROP + CREATE, and the grant again.
DROP FUNCTION symphony.enqueue_payment_outbox(text, text, text, text, jsonb);

CREATE FUNCTION symphony.enqueue_payment_outbox(
    p_instruction_id  text,
    p_idempotency_key text,
    p_participant_id  text,
    p_rail_type       text,
    p_payload         jsonb
) RETURNS TABLE (
    outbox_id   uuid,
    sequence_id bigint,
    state       text,
    created     boolean,
    created_at  timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_amount      jsonb;
    v_amount_text text;
    v_amount_num  numeric;
    v_currency    text;
    v_minor_units integer;
    v_metadata    jsonb;
    v_depth       integer;
    v_existing    payment_instruction_registry%ROWTYPE;
    v_outbox_id   uuid;
    v_sequence_id bigint;
    v_created_at  timestamptz;
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
    -- FOR SHARE: a revocation waits for enqueues in flight, and an enqueue that waited on a
    -- revocation re-reads the row and is refused. Once revoke_participant has committed, no
    -- new item of that participant can commit.
    PERFORM 1 FROM participants pt
      WHERE pt.participant_id = p_participant_id AND pt.status = 'ACTIVE'
        FOR SHARE;
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
    -- C0 and C1 controls, and the bidirectional marks, overrides and isolates that make a
    -- destination display as something else than what the rail receives.
    IF (p_payload ->> 'destination')
       ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'payload.destination must not contain control or bidirectional '
                        'formatting characters'
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

    -- I1 under concurrency: callers with the same triple queue on one transaction-scoped
    -- lock, so exactly one allocates a sequence number and inserts; the others then find its
    -- row. A lock rather than INSERT .. ON CONFLICT so that losers never burn a sequence
    -- number. chr(31) cannot occur in any of the three (validated above).
    PERFORM pg_advisory_xact_lock(
        hashtextextended(p_participant_id || chr(31) || p_instruction_id || chr(31)
                         || p_idempotency_key, 7301));

    SELECT * INTO v_existing
      FROM payment_instruction_registry r
     WHERE r.participant_id = p_participant_id
       AND r.instruction_id = p_instruction_id
       AND r.idempotency_key = p_idempotency_key;

    IF FOUND THEN
        IF v_existing.rail_type <> p_rail_type
           OR v_existing.payload <> p_payload THEN
            RAISE EXCEPTION 'idempotency key was already used with a different request'
                USING ERRCODE = 'SY100', CONSTRAINT = 'payment_instruction_registry_same_request';
        END IF;
        RETURN QUERY
        SELECT v_existing.outbox_id,
               v_existing.sequence_id,
               coalesce(
                   (SELECT CASE WHEN p.lease_token IS NULL THEN 'PENDING' ELSE 'DISPATCHING' END
                      FROM payment_outbox_pending p
                     WHERE p.outbox_id = v_existing.outbox_id),
                   (SELECT a.state::text
                      FROM payment_outbox_attempts a
                     WHERE a.outbox_id = v_existing.outbox_id
                       AND a.state IN ('DISPATCHED', 'FAILED')),
                   'PENDING'),
               false,
               v_existing.created_at;
        RETURN;
    END IF;

    -- I8: the row lock on the participant's counter is held to commit, so numbers are handed
    -- out strictly in enqueue order.
    INSERT INTO participant_outbox_sequences AS s (participant_id, last_sequence_id)
    VALUES (p_participant_id, 1)
    ON CONFLICT ON CONSTRAINT participant_outbox_sequences_pkey
    DO UPDATE SET last_sequence_id = s.last_sequence_id + 1, updated_at = now()
    RETURNING s.last_sequence_id INTO v_sequence_id;

    v_outbox_id := gen_random_uuid();

    INSERT INTO payment_instruction_registry AS r
        (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, rail_type,
         payload)
    VALUES
        (p_instruction_id, p_idempotency_key, v_outbox_id, p_participant_id, v_sequence_id,
         p_rail_type, p_payload)
    RETURNING r.created_at INTO v_created_at;

    INSERT INTO payment_outbox_pending (outbox_id, participant_id, sequence_id)
    VALUES (v_outbox_id, p_participant_id, v_sequence_id);

    RETURN QUERY SELECT v_outbox_id, v_sequence_id, 'PENDING'::text, true, v_created_at;
END
$$;

-- participants and tokens: the control role's functions ---------------------------------------

CREATE FUNCTION symphony.add_participant(
    p_participant_id text,
    p_display_name   text
) RETURNS SETOF symphony.participants
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF p_participant_id IS NULL OR p_participant_id !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$' THEN
        RAISE EXCEPTION 'participant_id must be 1-64 letters, digits, ".", "_", ":" or "-"'
            USING ERRCODE = 'SY013', CONSTRAINT = 'add_participant_id';
    END IF;
    IF p_display_name IS NULL OR char_length(p_display_name) NOT BETWEEN 1 AND 200
       OR p_display_name ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'display_name must be 1-200 characters without control characters'
            USING ERRCODE = 'SY035', CONSTRAINT = 'add_participant_display_name';
    END IF;
    RETURN QUERY
    INSERT INTO participants AS pt (participant_id, display_name)
    VALUES (p_participant_id, p_display_name)
    ON CONFLICT ON CONSTRAINT participants_pkey DO NOTHING
    RETURNING pt.*;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'a participant with this id exists already'
            USING ERRCODE = 'SY033', CONSTRAINT = 'add_participant_exists';
    END IF;
END
$$;

CREATE FUNCTION symphony.revoke_participant(
    p_participant_id text
) RETURNS SETOF symphony.participants
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_row participants%ROWTYPE;
BEGIN
    -- The row lock waits for enqueues in flight (they hold FOR SHARE) and makes later ones
    -- wait for this transaction, then see REVOKED.
    SELECT * INTO v_row FROM participants pt
     WHERE pt.participant_id = p_participant_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no participant with this id'
            USING ERRCODE = 'SY034', CONSTRAINT = 'revoke_participant_known';
    END IF;
    IF v_row.status = 'ACTIVE' THEN
        UPDATE participants pt SET status = 'REVOKED', revoked_at = now()
         WHERE pt.participant_id = p_participant_id
        RETURNING * INTO v_row;
    END IF;
    -- Also when the participant was revoked before: no token of it may stay live.
    UPDATE api_tokens t SET revoked_at = now()
     WHERE t.participant_id = p_participant_id AND t.revoked_at IS NULL;
    RETURN NEXT v_row;
END
$$;

CREATE FUNCTION symphony.issue_api_token(
    p_token_id       uuid,
    p_kind           text,
    p_participant_id text,
    p_label          text,
    p_secret_salt    bytea,
    p_secret_hash    bytea
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text,
    label          text,
    created_at     timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_token_id IS NULL OR p_kind IS NULL OR p_kind NOT IN ('PARTICIPANT', 'OPERATOR')
       OR (p_kind = 'PARTICIPANT') <> (p_participant_id IS NOT NULL)
       OR p_label IS NULL OR char_length(p_label) > 200
       OR p_label ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]'
       OR octet_length(p_secret_salt) IS DISTINCT FROM 16
       OR octet_length(p_secret_hash) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION 'a token is PARTICIPANT (with a participant) or OPERATOR (without), '
                        'with a label of at most 200 characters'
            USING ERRCODE = 'SY036', CONSTRAINT = 'issue_api_token_request';
    END IF;
    IF p_participant_id IS NOT NULL THEN
        PERFORM 1 FROM participants pt WHERE pt.participant_id = p_participant_id FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no participant with this id'
                USING ERRCODE = 'SY034', CONSTRAINT = 'issue_api_token_participant_known';
        END IF;
        PERFORM 1 FROM participants pt
         WHERE pt.participant_id = p_participant_id AND pt.status = 'ACTIVE';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the participant is not active'
                USING ERRCODE = 'SY030', CONSTRAINT = 'issue_api_token_participant_active';
        END IF;
    END IF;
    RETURN QUERY
    INSERT INTO api_tokens AS t
        (token_id, kind, participant_id, label, secret_salt, secret_hash)
    VALUES (p_token_id, p_kind, p_participant_id, p_label, p_secret_salt, p_secret_hash)
    RETURNING t.token_id, t.kind, t.participant_id, t.label, t.created_at;
END
$$;

CREATE FUNCTION symphony.revoke_api_token(
    p_token_id uuid
) RETURNS TABLE (
    token_id   uuid,
    revoked_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_revoked_at timestamptz;
BEGIN
    SELECT t.revoked_at INTO v_revoked_at FROM api_tokens t
     WHERE t.token_id = p_token_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no token with this id'
            USING ERRCODE = 'SY037', CONSTRAINT = 'revoke_api_token_known';
    END IF;
    -- Revoking twice is not an error: the token is dead either way, and stays so.
    IF v_revoked_at IS NULL THEN
        UPDATE api_tokens t SET revoked_at = now() WHERE t.token_id = p_token_id
        RETURNING t.revoked_at INTO v_revoked_at;
    END IF;
    RETURN QUERY SELECT p_token_id, v_revoked_at;
END
$$;

-- verification: the API's (readonly) functions --------------------------------------------------

-- The salt of a live token, so the caller can hash the secret it was shown. Salts are not
-- secret; the hash never leaves the table. NULL for an unknown or dead token.
CREATE FUNCTION symphony.api_token_salt(
    p_token_id uuid
) RETURNS bytea
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.secret_salt
      FROM api_tokens t
      LEFT JOIN participants pt ON pt.participant_id = t.participant_id
     WHERE t.token_id = p_token_id
       AND t.revoked_at IS NULL
       AND (t.participant_id IS NULL OR pt.status = 'ACTIVE')
$$;

-- Who a token is: one row only for an unrevoked token with the right hash whose participant
-- (if any) is ACTIVE; otherwise no row, whatever the reason (no oracle for an attacker).
CREATE FUNCTION symphony.authenticate_api_token(
    p_token_id    uuid,
    p_secret_hash bytea
) RETURNS TABLE (
    token_id       uuid,
    kind           text,
    participant_id text
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT t.token_id, t.kind, t.participant_id
      FROM api_tokens t
      LEFT JOIN participants pt ON pt.participant_id = t.participant_id
     WHERE t.token_id = p_token_id
       AND t.secret_hash = p_secret_hash
       AND t.revoked_at IS NULL
       AND (t.participant_id IS NULL OR pt.status = 'ACTIVE')
$$;

-- participant-scoped reads ------------------------------------------------------------------------

-- One item as its participant sees it. The logical state follows the ledger: its newest row
-- is the terminal one if there is one (nothing follows DISPATCHED or FAILED, I5). Readable by
-- the owner only; the functions below are the way in.
CREATE VIEW symphony.participant_payment_view AS
SELECT r.participant_id,
       r.sequence_id,
       r.outbox_id,
       r.instruction_id,
       r.idempotency_key,
       r.rail_type,
       r.payload,
       CASE
           WHEN l.state IN ('DISPATCHED', 'FAILED') THEN l.state::text
           WHEN p.lease_token IS NOT NULL THEN 'DISPATCHING'
           WHEN l.state = 'RETRYABLE' THEN 'RETRYABLE'
           ELSE 'PENDING'
       END AS state,
       coalesce(p.attempt_count,
                (SELECT count(*) FROM symphony.payment_outbox_attempts d
                  WHERE d.outbox_id = r.outbox_id AND d.state = 'DISPATCHING'))::integer
           AS attempt_count,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED') THEN NULL ELSE p.next_attempt_at END
           AS next_attempt_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED') THEN l.error_code
            ELSE p.last_error_code END AS last_error_code,
       r.created_at,
       coalesce(l.recorded_at, r.created_at) AS updated_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED') THEN l.recorded_at END AS terminal_at
  FROM symphony.payment_instruction_registry r
  -- Lateral probes (primary key, ledger index) per item: a page costs its own items, never
  -- a pass over the queue.
  LEFT JOIN LATERAL (
      SELECT q.lease_token, q.attempt_count, q.next_attempt_at, q.last_error_code
        FROM symphony.payment_outbox_pending q
       WHERE q.outbox_id = r.outbox_id
       LIMIT 1
  ) p ON true
  LEFT JOIN LATERAL (
      SELECT a.state, a.error_code, a.recorded_at
        FROM symphony.payment_outbox_attempts a
       WHERE a.outbox_id = r.outbox_id
       ORDER BY a.attempt_no DESC
       LIMIT 1
  ) l ON true;

CREATE FUNCTION symphony.participant_payment(
    p_participant_id text,
    p_outbox_id      uuid
) RETURNS TABLE (
    outbox_id       uuid,
    instruction_id  text,
    idempotency_key text,
    rail_type       text,
    payload         jsonb,
    state           text,
    attempt_count   integer,
    next_attempt_at timestamptz,
    last_error_code text,
    created_at      timestamptz,
    updated_at      timestamptz,
    terminal_at     timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT v.outbox_id, v.instruction_id, v.idempotency_key, v.rail_type, v.payload, v.state,
           v.attempt_count, v.next_attempt_at, v.last_error_code, v.created_at, v.updated_at,
           v.terminal_at
      FROM participant_payment_view v
     WHERE v.outbox_id = p_outbox_id
       AND v.participant_id = p_participant_id
$$;

-- The history of one of the participant's items, oldest first. No worker id, lease token or
-- login; a zombie requeue's detail (which names the worker) is replaced by a fixed text.
CREATE FUNCTION symphony.participant_payment_attempts(
    p_participant_id text,
    p_outbox_id      uuid
) RETURNS TABLE (
    attempt_no          integer,
    state               text,
    error_code          text,
    error_detail        text,
    rail_transaction_id text,
    recorded_at         timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT a.attempt_no, a.state::text, a.error_code,
           CASE WHEN a.state = 'ZOMBIE_REQUEUE'
                THEN 'the dispatch did not report back in time; the payment was requeued'
                ELSE a.error_detail END,
           a.rail_transaction_id, a.recorded_at
      FROM payment_instruction_registry r
      JOIN payment_outbox_attempts a ON a.outbox_id = r.outbox_id
     WHERE r.outbox_id = p_outbox_id
       AND r.participant_id = p_participant_id
     ORDER BY a.attempt_no
$$;

-- The participant's items, newest first by its own sequence; a page ends where the next one
-- starts after (the cursor is the outbox_id of the previous page's last item, and must be one
-- of the caller's own items: another participant's id is refused, not silently ignored).
CREATE FUNCTION symphony.participant_payments(
    p_participant_id text,
    p_state          text DEFAULT NULL,
    p_after          uuid DEFAULT NULL,
    p_limit          integer DEFAULT 50
) RETURNS TABLE (
    outbox_id       uuid,
    instruction_id  text,
    idempotency_key text,
    rail_type       text,
    payload         jsonb,
    state           text,
    attempt_count   integer,
    next_attempt_at timestamptz,
    last_error_code text,
    created_at      timestamptz,
    updated_at      timestamptz,
    terminal_at     timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_before bigint := 9223372036854775807;
    v_low    bigint;
    v_seen   integer;
    v_got    integer;
    v_found  integer := 0;
    -- Items looked at per step. The state is derived (ledger, lease), so it cannot be
    -- indexed: the walk goes through the participant's items in windows of the
    -- (participant_id, sequence_id) index, each a bounded range scan, until the page is full.
    v_window constant integer := 200;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'limit must be between 1 and 200'
            USING ERRCODE = 'SY021', CONSTRAINT = 'participant_payments_limit';
    END IF;
    IF p_state IS NOT NULL
       AND p_state NOT IN ('PENDING', 'DISPATCHING', 'RETRYABLE', 'DISPATCHED', 'FAILED') THEN
        RAISE EXCEPTION 'state must be PENDING, DISPATCHING, RETRYABLE, DISPATCHED or FAILED'
            USING ERRCODE = 'SY032', CONSTRAINT = 'participant_payments_state';
    END IF;
    IF p_after IS NOT NULL THEN
        SELECT r.sequence_id INTO v_before
          FROM payment_instruction_registry r
         WHERE r.outbox_id = p_after AND r.participant_id = p_participant_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the cursor is not one of the caller''s payments'
                USING ERRCODE = 'SY031', CONSTRAINT = 'participant_payments_cursor';
        END IF;
    END IF;
    LOOP
        SELECT min(w.sequence_id), count(*) INTO v_low, v_seen
          FROM (SELECT r.sequence_id
                  FROM payment_instruction_registry r
                 WHERE r.participant_id = p_participant_id
                   AND r.sequence_id < v_before
                 ORDER BY r.sequence_id DESC
                 LIMIT v_window) w;
        EXIT WHEN v_seen = 0;
        RETURN QUERY
        SELECT v.outbox_id, v.instruction_id, v.idempotency_key, v.rail_type, v.payload,
               v.state, v.attempt_count, v.next_attempt_at, v.last_error_code, v.created_at,
               v.updated_at, v.terminal_at
          FROM participant_payment_view v
         WHERE v.participant_id = p_participant_id
           AND v.sequence_id < v_before
           AND v.sequence_id >= v_low
           AND (p_state IS NULL OR v.state = p_state)
         ORDER BY v.sequence_id DESC
         LIMIT p_limit - v_found;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_found := v_found + v_got;
        EXIT WHEN v_found >= p_limit OR v_seen < v_window;
        v_before := v_low;
    END LOOP;
END
$$;

-- grants ----------------------------------------------------------------------------------------

REVOKE ALL ON symphony.participants, symphony.api_tokens, symphony.currencies,
              symphony.participant_payment_view FROM PUBLIC;
REVOKE ALL ON FUNCTION
    symphony.enqueue_payment_outbox(text, text, text, text, jsonb),
    symphony.add_participant(text, text),
    symphony.revoke_participant(text),
    symphony.issue_api_token(uuid, text, text, text, bytea, bytea),
    symphony.revoke_api_token(uuid),
    symphony.api_token_salt(uuid),
    symphony.authenticate_api_token(uuid, bytea),
    symphony.participant_payment(text, uuid),
    symphony.participant_payment_attempts(text, uuid),
    symphony.participant_payments(text, text, uuid, integer),
    symphony.check_access_forward_only()
    FROM PUBLIC;

GRANT EXECUTE ON FUNCTION symphony.enqueue_payment_outbox(text, text, text, text, jsonb)
    TO symphony_ingest;

GRANT EXECUTE ON FUNCTION
    symphony.add_participant(text, text),
    symphony.revoke_participant(text),
    symphony.issue_api_token(uuid, text, text, text, bytea, bytea),
    symphony.revoke_api_token(uuid)
    TO symphony_control;

GRANT EXECUTE ON FUNCTION
    symphony.api_token_salt(uuid),
    symphony.authenticate_api_token(uuid, bytea),
    symphony.participant_payment(text, uuid),
    symphony.participant_payment_attempts(text, uuid),
    symphony.participant_payments(text, text, uuid, integer)
    TO symphony_readonly, symphony_control;

-- Participants and currencies are not secret; token rows are readable by nobody but the
-- functions (not even their salts: api_token_salt hands out one at a time, for live tokens).
GRANT SELECT ON symphony.participants, symphony.currencies
    TO symphony_control, symphony_readonly, symphony_auditor;

-- readonly and auditor: the registry without sequence_id (a participant's volume).
REVOKE SELECT ON symphony.payment_instruction_registry FROM symphony_readonly, symphony_auditor;
GRANT SELECT (instruction_id, idempotency_key, outbox_id, participant_id, rail_type, payload,
              created_at)
    ON symphony.payment_instruction_registry
    TO symphony_readonly, symphony_auditor;
