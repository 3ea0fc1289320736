-- Webhook endpoints, their signing secrets, deliveries and the delivery attempts.
--
-- Why:
-- * A participant is told of its payments' events (payment_events, written in the payment's
--   own transaction) by signed HTTP calls to endpoints it registers. Payments never wait for
--   them: no payment function touches these tables. The delivery service fans events out to
--   deliveries by itself, with a cursor per endpoint over the participant's gap-free,
--   commit-ordered event_seq, so a payment transaction does not grow with the number of
--   endpoints, and an endpoint registered later starts at the events after it.
-- * Signing secrets are kept only encrypted (AES-256-GCM, by the application, with a key the
--   deployment provides): the plain secret never reaches the database or its statement log,
--   and a dump or backup of the table opens nothing. No runtime role may read the table: the
--   delivery service receives the ciphertexts of an endpoint's live secrets through its claim
--   function; the API's role can create and rotate a secret, never read one back.
--   A rotation keeps the old secret live for an overlap window, and both sign meanwhile.
-- * Deliveries are claimed with leases like outbox items: a delivery service killed mid-call
--   leaves a lease that expires, and the next claim records the lost attempt
--   (error_class lease_expired) and sends it again with the same webhook-id (the event id).
-- * Every attempt is a row of an append-only table (time, HTTP status, latency, error class,
--   a bounded sanitized excerpt of the answer): UPDATE, DELETE and TRUNCATE are refused, even
--   for the owner (trigger, P0001), like the outbox ledger.
-- * An endpoint's health (consecutive failures, failing since) is kept on its row; it turns
--   failing after persistent errors, which the metrics and the dashboard show.
-- * Deliveries commit without waiting for the WAL flush (synchronous_commit off for the
--   fan-out, claim and completion transactions only; payments keep theirs): with every
--   endpoint down the delivery service writes an attempt per call, and waiting for a flush
--   each time would queue behind, and slow, the payments' own commits. What a crash can lose
--   is the last fraction of a second of these writes, and each loss only repeats work: a lost
--   fan-out is fanned out again from the cursor, a lost claim or completion leaves the
--   delivery to be claimed and sent again (same webhook-id). At least once holds.
-- * Every table is keyed by participant_id (the scale-out readiness check): primary keys,
--   unique indexes and foreign keys carry it.
-- * Two runtime roles: symphony_delivery (the delivery service's, through its own login
--   symphony_delivery_svc) may only fan out, claim, complete and read the health summary;
--   symphony_webhooks (the API's, through symphony_api_svc) manages a participant's endpoints
--   and the operator's disable/enable/replay. symphony_control runs the operator's functions
--   too (the `symphony webhooks` command). Neither reads a table directly.
-- SQLSTATEs SY070-SY077 are this migration's refusals.

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['symphony_delivery', 'symphony_webhooks'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I', r);
        END IF;
        EXECUTE format(
            'ALTER ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT '
            'NOREPLICATION NOBYPASSRLS', r);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'symphony_delivery_svc') THEN
        CREATE ROLE symphony_delivery_svc;
    END IF;
    ALTER ROLE symphony_delivery_svc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
        NOREPLICATION NOBYPASSRLS;
    -- PostgreSQL 16+ names the membership options; on 15 a NOINHERIT login's membership
    -- already grants SET ROLE and nothing else.
    IF current_setting('server_version_num')::integer >= 160000 THEN
        EXECUTE 'GRANT symphony_delivery TO symphony_delivery_svc '
                'WITH INHERIT FALSE, SET TRUE, ADMIN FALSE';
        EXECUTE 'GRANT symphony_webhooks TO symphony_api_svc '
                'WITH INHERIT FALSE, SET TRUE, ADMIN FALSE';
    ELSE
        EXECUTE 'GRANT symphony_delivery TO symphony_delivery_svc';
        EXECUTE 'GRANT symphony_webhooks TO symphony_api_svc';
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA symphony TO symphony_delivery, symphony_webhooks;
GRANT USAGE ON SCHEMA symphony_meta TO symphony_delivery, symphony_webhooks;
GRANT SELECT ON symphony_meta.schema_migrations TO symphony_delivery, symphony_webhooks;

SET LOCAL ROLE symphony_owner;

-- tables ----------------------------------------------------------------------------------------

CREATE TABLE symphony.webhook_endpoints (
    participant_id       text        NOT NULL,
    endpoint_id          uuid        NOT NULL,
    url                  text        NOT NULL,
    event_types          text[]      NOT NULL,
    description          text        NOT NULL DEFAULT '',
    status               text        NOT NULL DEFAULT 'ENABLED',
    status_reason        text,
    -- The fan-out's position in the participant's events: every event_seq up to it has its
    -- deliveries (or did not match the endpoint's types).
    event_cursor         bigint      NOT NULL DEFAULT 0,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error_class     text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_pkey PRIMARY KEY (participant_id, endpoint_id),
    CONSTRAINT webhook_endpoints_participant_fkey
        FOREIGN KEY (participant_id) REFERENCES symphony.participants (participant_id),
    CONSTRAINT webhook_endpoints_url_shape
        CHECK (char_length(url) BETWEEN 10 AND 2048 AND url ~ '^https?://[!-~]+$'),
    CONSTRAINT webhook_endpoints_event_types_known
        CHECK (cardinality(event_types) BETWEEN 1 AND 5
               AND event_types <@ ARRAY['payment.created', 'payment.dispatched',
                                        'payment.failed', 'payment.canceled',
                                        'payment.under_review']::text[]),
    CONSTRAINT webhook_endpoints_description_format
        CHECK (char_length(description) <= 200
               AND description !~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]'),
    CONSTRAINT webhook_endpoints_status_known
        CHECK (status IN ('ENABLED', 'DISABLED', 'DELETED')),
    CONSTRAINT webhook_endpoints_cursor_nonnegative CHECK (event_cursor >= 0),
    CONSTRAINT webhook_endpoints_failures_nonnegative CHECK (consecutive_failures >= 0)
);

-- The fan-out and the claim look for enabled endpoints; the operator lists by status.
CREATE INDEX webhook_endpoints_status_idx ON symphony.webhook_endpoints (status);

CREATE TABLE symphony.webhook_endpoint_secrets (
    participant_id    text        NOT NULL,
    endpoint_id       uuid        NOT NULL,
    secret_no         integer     NOT NULL,
    -- nonce (12 bytes) || AES-256-GCM ciphertext of the 32 secret bytes || tag (16 bytes)
    secret_ciphertext bytea       NOT NULL,
    -- Which deployment key sealed it (a fingerprint, not the key): a wrong key is named.
    key_id            text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- NULL: live. A rotation sets it to the end of the overlap window.
    expires_at        timestamptz,
    CONSTRAINT webhook_endpoint_secrets_pkey
        PRIMARY KEY (participant_id, endpoint_id, secret_no),
    CONSTRAINT webhook_endpoint_secrets_endpoint_fkey
        FOREIGN KEY (participant_id, endpoint_id)
        REFERENCES symphony.webhook_endpoints (participant_id, endpoint_id),
    CONSTRAINT webhook_endpoint_secrets_ciphertext_length
        CHECK (octet_length(secret_ciphertext) = 60),
    CONSTRAINT webhook_endpoint_secrets_key_id_format CHECK (key_id ~ '^[0-9a-f]{16}$'),
    CONSTRAINT webhook_endpoint_secrets_number_positive CHECK (secret_no >= 1)
);

CREATE TABLE symphony.webhook_deliveries (
    participant_id   text        NOT NULL,
    delivery_id      uuid        NOT NULL DEFAULT gen_random_uuid(),
    endpoint_id      uuid        NOT NULL,
    -- The event, by its key in payment_events. No foreign key: the fan-out makes deliveries
    -- only of events that exist, events are never removed, and a foreign key would make the
    -- events table's TRUNCATE fail on the reference instead of its own append-only rule.
    event_seq        bigint      NOT NULL,
    event_id         uuid        NOT NULL,
    -- PENDING until DELIVERED (a 2xx), FAILED (the retry schedule ran out) or ABANDONED (the
    -- endpoint was deleted first).
    status           text        NOT NULL DEFAULT 'PENDING',
    attempt_count    integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    claimed_by       text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    replay_of        uuid,
    replay_requested_by text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (participant_id, delivery_id),
    CONSTRAINT webhook_deliveries_endpoint_fkey
        FOREIGN KEY (participant_id, endpoint_id)
        REFERENCES symphony.webhook_endpoints (participant_id, endpoint_id),
    CONSTRAINT webhook_deliveries_status_known
        CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED', 'ABANDONED')),
    CONSTRAINT webhook_deliveries_lease_whole
        CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL)),
    CONSTRAINT webhook_deliveries_finished_iff_ended
        CHECK ((status = 'PENDING') = (finished_at IS NULL)),
    CONSTRAINT webhook_deliveries_attempts_nonnegative CHECK (attempt_count >= 0),
    CONSTRAINT webhook_deliveries_replay_requester
        CHECK ((replay_of IS NULL) = (replay_requested_by IS NULL))
);

-- One delivery per (endpoint, event) from the fan-out, however often it runs; replays are
-- deliveries of their own.
CREATE UNIQUE INDEX webhook_deliveries_one_per_event_idx
    ON symphony.webhook_deliveries (participant_id, endpoint_id, event_id)
    WHERE replay_of IS NULL;
-- The claim: due deliveries, oldest first.
CREATE INDEX webhook_deliveries_due_idx
    ON symphony.webhook_deliveries (next_attempt_at)
    WHERE status = 'PENDING';
-- An endpoint's deliveries, newest first (operators; the deletion's abandonment).
CREATE INDEX webhook_deliveries_endpoint_idx
    ON symphony.webhook_deliveries (participant_id, endpoint_id, created_at);
-- The operator's replay names a delivery by its id alone.
CREATE INDEX webhook_deliveries_delivery_id_idx
    ON symphony.webhook_deliveries (delivery_id);

CREATE TABLE symphony.webhook_delivery_attempts (
    participant_id   text        NOT NULL,
    delivery_id      uuid        NOT NULL,
    attempt_no       integer     NOT NULL,
    endpoint_id      uuid        NOT NULL,
    event_id         uuid        NOT NULL,
    worker_id        text,
    started_at       timestamptz,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    outcome          text        NOT NULL,
    http_status      integer,
    latency_ms       integer,
    error_class      text,
    response_excerpt text,
    next_attempt_at  timestamptz,
    CONSTRAINT webhook_delivery_attempts_pkey PRIMARY KEY (participant_id, delivery_id, attempt_no),
    CONSTRAINT webhook_delivery_attempts_delivery_fkey
        FOREIGN KEY (participant_id, delivery_id)
        REFERENCES symphony.webhook_deliveries (participant_id, delivery_id),
    CONSTRAINT webhook_delivery_attempts_outcome_known
        CHECK (outcome IN ('DELIVERED', 'RETRY', 'FAILED', 'LEASE_EXPIRED')),
    CONSTRAINT webhook_delivery_attempts_number_positive CHECK (attempt_no >= 1),
    CONSTRAINT webhook_delivery_attempts_status_range
        CHECK (http_status IS NULL OR http_status BETWEEN 100 AND 599),
    CONSTRAINT webhook_delivery_attempts_latency_nonnegative
        CHECK (latency_ms IS NULL OR latency_ms >= 0),
    CONSTRAINT webhook_delivery_attempts_error_class_format
        CHECK (error_class IS NULL OR error_class ~ '^[a-z][a-z0-9_]{0,39}$'),
    -- Bounded and printable: an endpoint's answer is outside input.
    CONSTRAINT webhook_delivery_attempts_excerpt_bounded
        CHECK (response_excerpt IS NULL
               OR (char_length(response_excerpt) <= 256 AND response_excerpt ~ '^[ -~]*$'))
);

CREATE FUNCTION symphony.refuse_webhook_attempt_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'webhook delivery attempts are append-only'
        USING ERRCODE = 'P0001', CONSTRAINT = 'webhook_delivery_attempts_append_only';
END
$$;

CREATE TRIGGER webhook_delivery_attempts_append_only
    BEFORE UPDATE OR DELETE ON symphony.webhook_delivery_attempts
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_webhook_attempt_change();
CREATE TRIGGER webhook_delivery_attempts_no_truncate
    BEFORE TRUNCATE ON symphony.webhook_delivery_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_webhook_attempt_change();
ALTER TABLE symphony.webhook_delivery_attempts
    ENABLE ALWAYS TRIGGER webhook_delivery_attempts_append_only,
    ENABLE ALWAYS TRIGGER webhook_delivery_attempts_no_truncate;

-- the participant's endpoints (role symphony_webhooks) ------------------------------------------

CREATE FUNCTION symphony.webhook_check_secret(p_ciphertext bytea, p_key_id text) RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF p_ciphertext IS NULL OR octet_length(p_ciphertext) <> 60
       OR p_key_id IS NULL OR p_key_id !~ '^[0-9a-f]{16}$' THEN
        RAISE EXCEPTION 'a sealed secret is 60 bytes with a 16-hex-digit key id'
            USING ERRCODE = 'SY074', CONSTRAINT = 'webhook_secret_sealed';
    END IF;
END
$$;

CREATE FUNCTION symphony.create_webhook_endpoint(
    p_participant_id    text,
    p_endpoint_id       uuid,
    p_url               text,
    p_event_types       text[],
    p_description       text,
    p_secret_ciphertext bytea,
    p_key_id            text
) RETURNS TABLE (
    endpoint_id uuid,
    url         text,
    event_types text[],
    description text,
    status      text,
    created_at  timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_live   integer;
    v_cursor bigint;
BEGIN
    IF p_endpoint_id IS NULL THEN
        RAISE EXCEPTION 'an endpoint needs an id'
            USING ERRCODE = 'SY074', CONSTRAINT = 'create_webhook_endpoint_id';
    END IF;
    IF p_url IS NULL OR char_length(p_url) NOT BETWEEN 10 AND 2048
       OR p_url !~ '^https?://[!-~]+$' THEN
        RAISE EXCEPTION 'url must be an http(s) URL of at most 2048 printable characters'
            USING ERRCODE = 'SY070', CONSTRAINT = 'create_webhook_endpoint_url';
    END IF;
    IF p_event_types IS NULL OR cardinality(p_event_types) NOT BETWEEN 1 AND 5
       OR array_position(p_event_types, NULL) IS NOT NULL
       OR NOT p_event_types <@ ARRAY['payment.created', 'payment.dispatched', 'payment.failed',
                                     'payment.canceled', 'payment.under_review']::text[]
       OR (SELECT count(DISTINCT t) FROM unnest(p_event_types) t) <> cardinality(p_event_types)
    THEN
        RAISE EXCEPTION 'event_types must be 1-5 distinct known event types'
            USING ERRCODE = 'SY071', CONSTRAINT = 'create_webhook_endpoint_event_types';
    END IF;
    IF p_description IS NULL OR char_length(p_description) > 200
       OR p_description ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'description must be at most 200 characters without control characters'
            USING ERRCODE = 'SY074', CONSTRAINT = 'create_webhook_endpoint_description';
    END IF;
    PERFORM webhook_check_secret(p_secret_ciphertext, p_key_id);
    -- FOR UPDATE: two creations of one participant count its endpoints one after the other.
    PERFORM 1 FROM participants pt
      WHERE pt.participant_id = p_participant_id AND pt.status = 'ACTIVE'
        FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the participant is not registered or not active'
            USING ERRCODE = 'SY030', CONSTRAINT = 'create_webhook_endpoint_participant';
    END IF;
    SELECT count(*) INTO v_live FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.status <> 'DELETED';
    IF v_live >= 16 THEN
        RAISE EXCEPTION 'a participant may have at most 16 webhook endpoints'
            USING ERRCODE = 'SY072', CONSTRAINT = 'create_webhook_endpoint_limit';
    END IF;
    -- Events from now on: every event not yet visible gets a larger event_seq (they are
    -- numbered in commit order without gaps), so the cursor skips none of them.
    SELECT coalesce(max(ev.event_seq), 0) INTO v_cursor
      FROM payment_events ev WHERE ev.participant_id = p_participant_id;
    INSERT INTO webhook_endpoints AS e
        (participant_id, endpoint_id, url, event_types, description, event_cursor)
    VALUES (p_participant_id, p_endpoint_id, p_url, p_event_types, p_description, v_cursor);
    INSERT INTO webhook_endpoint_secrets
        (participant_id, endpoint_id, secret_no, secret_ciphertext, key_id)
    VALUES (p_participant_id, p_endpoint_id, 1, p_secret_ciphertext, p_key_id);
    RETURN QUERY
    SELECT e.endpoint_id, e.url, e.event_types, e.description, e.status, e.created_at
      FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id;
END
$$;

-- A participant's endpoints (deleted ones left out), oldest first, with their health. No
-- secret, no cursor.
CREATE FUNCTION symphony.participant_webhook_endpoints(
    p_participant_id text
) RETURNS TABLE (
    endpoint_id          uuid,
    url                  text,
    event_types          text[],
    description          text,
    status               text,
    consecutive_failures integer,
    failing_since        timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error_class     text,
    live_secrets         integer,
    created_at           timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT e.endpoint_id, e.url, e.event_types, e.description, e.status,
           e.consecutive_failures, e.failing_since, e.last_success_at, e.last_failure_at,
           e.last_error_class,
           (SELECT count(*)::integer FROM webhook_endpoint_secrets s
             WHERE s.participant_id = e.participant_id AND s.endpoint_id = e.endpoint_id
               AND (s.expires_at IS NULL OR s.expires_at > now())),
           e.created_at
      FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.status <> 'DELETED'
     ORDER BY e.created_at, e.endpoint_id
$$;

CREATE FUNCTION symphony.delete_webhook_endpoint(
    p_participant_id text,
    p_endpoint_id    uuid
) RETURNS TABLE (
    endpoint_id          uuid,
    status               text,
    abandoned_deliveries integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_status    text;
    v_abandoned integer;
BEGIN
    SELECT e.status INTO v_status FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id
       FOR UPDATE;
    IF NOT FOUND OR v_status = 'DELETED' THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'delete_webhook_endpoint_known';
    END IF;
    UPDATE webhook_endpoints e
       SET status = 'DELETED', status_reason = 'deleted by the participant', updated_at = now()
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id;
    -- Its secrets stop signing at once.
    UPDATE webhook_endpoint_secrets s SET expires_at = now()
     WHERE s.participant_id = p_participant_id AND s.endpoint_id = p_endpoint_id
       AND (s.expires_at IS NULL OR s.expires_at > now());
    UPDATE webhook_deliveries d
       SET status = 'ABANDONED', finished_at = now(), lease_token = NULL,
           lease_expires_at = NULL, claimed_by = NULL
     WHERE d.participant_id = p_participant_id AND d.endpoint_id = p_endpoint_id
       AND d.status = 'PENDING';
    GET DIAGNOSTICS v_abandoned = ROW_COUNT;
    RETURN QUERY SELECT p_endpoint_id, 'DELETED'::text, v_abandoned;
END
$$;

-- A new secret, live at once; the ones live before stay live for p_overlap_seconds more
-- (0-604800), so receivers can switch without dropping a delivery.
CREATE FUNCTION symphony.rotate_webhook_endpoint_secret(
    p_participant_id    text,
    p_endpoint_id       uuid,
    p_secret_ciphertext bytea,
    p_key_id            text,
    p_overlap_seconds   integer
) RETURNS TABLE (
    endpoint_id      uuid,
    secret_no        integer,
    previous_expires timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_status  text;
    v_next    integer;
    v_expires timestamptz;
BEGIN
    IF p_overlap_seconds IS NULL OR p_overlap_seconds NOT BETWEEN 0 AND 604800 THEN
        RAISE EXCEPTION 'the overlap is 0 to 604800 seconds (7 days)'
            USING ERRCODE = 'SY074', CONSTRAINT = 'rotate_webhook_endpoint_secret_overlap';
    END IF;
    PERFORM webhook_check_secret(p_secret_ciphertext, p_key_id);
    SELECT e.status INTO v_status FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id
       FOR UPDATE;
    IF NOT FOUND OR v_status = 'DELETED' THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'rotate_webhook_endpoint_secret_known';
    END IF;
    v_expires := now() + make_interval(secs => p_overlap_seconds);
    UPDATE webhook_endpoint_secrets s
       SET expires_at = least(coalesce(s.expires_at, 'infinity'::timestamptz), v_expires)
     WHERE s.participant_id = p_participant_id AND s.endpoint_id = p_endpoint_id
       AND (s.expires_at IS NULL OR s.expires_at > now());
    SELECT coalesce(max(s.secret_no), 0) + 1 INTO v_next FROM webhook_endpoint_secrets s
     WHERE s.participant_id = p_participant_id AND s.endpoint_id = p_endpoint_id;
    INSERT INTO webhook_endpoint_secrets
        (participant_id, endpoint_id, secret_no, secret_ciphertext, key_id)
    VALUES (p_participant_id, p_endpoint_id, v_next, p_secret_ciphertext, p_key_id);
    UPDATE webhook_endpoints e SET updated_at = now()
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = p_endpoint_id;
    RETURN QUERY SELECT p_endpoint_id, v_next, v_expires;
END
$$;

-- the operator's (roles symphony_webhooks and symphony_control) ------------------------------

CREATE FUNCTION symphony.ops_webhook_endpoints(
    p_status text,
    p_limit  integer
) RETURNS TABLE (
    participant_id       text,
    endpoint_id          uuid,
    url                  text,
    event_types          text[],
    status               text,
    status_reason        text,
    consecutive_failures integer,
    failing_since        timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error_class     text,
    pending_deliveries   integer,
    created_at           timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'ops_webhook_endpoints_limit';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('ENABLED', 'DISABLED', 'DELETED', 'FAILING') THEN
        RAISE EXCEPTION 'status must be ENABLED, DISABLED, DELETED or FAILING'
            USING ERRCODE = 'SY074', CONSTRAINT = 'ops_webhook_endpoints_status';
    END IF;
    RETURN QUERY
    SELECT e.participant_id, e.endpoint_id, e.url, e.event_types, e.status, e.status_reason,
           e.consecutive_failures, e.failing_since, e.last_success_at, e.last_failure_at,
           e.last_error_class,
           (SELECT count(*)::integer FROM webhook_deliveries d
             WHERE d.participant_id = e.participant_id AND d.endpoint_id = e.endpoint_id
               AND d.status = 'PENDING'),
           e.created_at
      FROM webhook_endpoints e
     WHERE CASE WHEN p_status IS NULL THEN e.status <> 'DELETED'
                WHEN p_status = 'FAILING' THEN e.status = 'ENABLED'
                                               AND e.failing_since IS NOT NULL
                ELSE e.status = p_status END
     -- Failing endpoints first, then the longest failing, then by age.
     ORDER BY (e.failing_since IS NULL), e.failing_since, e.created_at, e.endpoint_id
     LIMIT p_limit;
END
$$;

CREATE FUNCTION symphony.set_webhook_endpoint_enabled(
    p_endpoint_id uuid,
    p_enabled     boolean,
    p_reason      text
) RETURNS TABLE (
    participant_id text,
    endpoint_id    uuid,
    status         text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row webhook_endpoints%ROWTYPE;
BEGIN
    IF p_enabled IS NULL OR p_reason IS NULL OR char_length(p_reason) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'a reason of 1-500 characters without control characters is required'
            USING ERRCODE = 'SY074', CONSTRAINT = 'set_webhook_endpoint_enabled_reason';
    END IF;
    SELECT * INTO v_row FROM webhook_endpoints e WHERE e.endpoint_id = p_endpoint_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'set_webhook_endpoint_enabled_known';
    END IF;
    IF v_row.status = 'DELETED' THEN
        RAISE EXCEPTION 'the webhook endpoint was deleted'
            USING ERRCODE = 'SY075', CONSTRAINT = 'set_webhook_endpoint_enabled_deleted';
    END IF;
    -- Enabling starts a fresh health record: the operator says the receiver is fixed.
    UPDATE webhook_endpoints e
       SET status = CASE WHEN p_enabled THEN 'ENABLED' ELSE 'DISABLED' END,
           status_reason = p_reason,
           consecutive_failures = CASE WHEN p_enabled THEN 0 ELSE e.consecutive_failures END,
           failing_since = CASE WHEN p_enabled THEN NULL ELSE e.failing_since END,
           updated_at = now()
     WHERE e.participant_id = v_row.participant_id AND e.endpoint_id = p_endpoint_id;
    RETURN QUERY SELECT v_row.participant_id, p_endpoint_id,
                        CASE WHEN p_enabled THEN 'ENABLED' ELSE 'DISABLED' END;
END
$$;

-- An endpoint's deliveries, newest first, with their last attempt.
CREATE FUNCTION symphony.ops_webhook_deliveries(
    p_endpoint_id uuid,
    p_limit       integer
) RETURNS TABLE (
    delivery_id      uuid,
    participant_id   text,
    endpoint_id      uuid,
    event_id         uuid,
    event_seq        bigint,
    status           text,
    attempt_count    integer,
    next_attempt_at  timestamptz,
    replay_of        uuid,
    created_at       timestamptz,
    finished_at      timestamptz,
    last_http_status integer,
    last_error_class text,
    last_attempt_at  timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_participant text;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'ops_webhook_deliveries_limit';
    END IF;
    SELECT e.participant_id INTO v_participant FROM webhook_endpoints e
     WHERE e.endpoint_id = p_endpoint_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook endpoint with this id'
            USING ERRCODE = 'SY073', CONSTRAINT = 'ops_webhook_deliveries_known';
    END IF;
    RETURN QUERY
    SELECT d.delivery_id, d.participant_id, d.endpoint_id, d.event_id, d.event_seq, d.status,
           d.attempt_count, CASE WHEN d.status = 'PENDING' THEN d.next_attempt_at END,
           d.replay_of, d.created_at, d.finished_at, a.http_status, a.error_class, a.recorded_at
      FROM webhook_deliveries d
      LEFT JOIN LATERAL (
          SELECT x.http_status, x.error_class, x.recorded_at
            FROM webhook_delivery_attempts x
           WHERE x.participant_id = d.participant_id AND x.delivery_id = d.delivery_id
           ORDER BY x.attempt_no DESC
           LIMIT 1
      ) a ON true
     WHERE d.participant_id = v_participant AND d.endpoint_id = p_endpoint_id
     ORDER BY d.created_at DESC, d.delivery_id
     LIMIT p_limit;
END
$$;

-- Send one delivery's event again, as a delivery of its own (the original keeps its history).
CREATE FUNCTION symphony.replay_webhook_delivery(
    p_delivery_id  uuid,
    p_requested_by text
) RETURNS TABLE (
    delivery_id    uuid,
    participant_id text,
    endpoint_id    uuid,
    event_id       uuid,
    replay_of      uuid
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row    webhook_deliveries%ROWTYPE;
    v_status text;
BEGIN
    IF p_requested_by IS NULL OR char_length(p_requested_by) NOT BETWEEN 1 AND 200
       OR p_requested_by ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'who asks for the replay: 1-200 characters without control characters'
            USING ERRCODE = 'SY074', CONSTRAINT = 'replay_webhook_delivery_requester';
    END IF;
    SELECT * INTO v_row FROM webhook_deliveries d WHERE d.delivery_id = p_delivery_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook delivery with this id'
            USING ERRCODE = 'SY076', CONSTRAINT = 'replay_webhook_delivery_known';
    END IF;
    SELECT e.status INTO v_status FROM webhook_endpoints e
     WHERE e.participant_id = v_row.participant_id AND e.endpoint_id = v_row.endpoint_id;
    IF v_status = 'DELETED' THEN
        RAISE EXCEPTION 'the webhook endpoint was deleted'
            USING ERRCODE = 'SY075', CONSTRAINT = 'replay_webhook_delivery_deleted';
    END IF;
    RETURN QUERY
    INSERT INTO webhook_deliveries AS d
        (participant_id, endpoint_id, event_seq, event_id, replay_of, replay_requested_by)
    VALUES (v_row.participant_id, v_row.endpoint_id, v_row.event_seq, v_row.event_id,
            coalesce(v_row.replay_of, v_row.delivery_id), p_requested_by)
    RETURNING d.delivery_id, d.participant_id, d.endpoint_id, d.event_id, d.replay_of;
END
$$;

-- The health summary the metrics and the dashboard show.
CREATE FUNCTION symphony.webhook_health() RETURNS TABLE (
    endpoints_enabled    integer,
    endpoints_disabled   integer,
    endpoints_failing    integer,
    deliveries_pending   integer,
    deliveries_due       integer,
    oldest_due_at        timestamptz,
    deliveries_failed    integer,
    observed_at          timestamptz
)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
    SELECT (SELECT count(*) FROM webhook_endpoints e WHERE e.status = 'ENABLED')::integer,
           (SELECT count(*) FROM webhook_endpoints e WHERE e.status = 'DISABLED')::integer,
           (SELECT count(*) FROM webhook_endpoints e
             WHERE e.status = 'ENABLED' AND e.failing_since IS NOT NULL)::integer,
           (SELECT count(*) FROM webhook_deliveries d WHERE d.status = 'PENDING')::integer,
           (SELECT count(*) FROM webhook_deliveries d
             WHERE d.status = 'PENDING' AND d.next_attempt_at <= now())::integer,
           (SELECT min(d.next_attempt_at) FROM webhook_deliveries d
             WHERE d.status = 'PENDING' AND d.next_attempt_at <= now()),
           (SELECT count(*) FROM webhook_deliveries d WHERE d.status = 'FAILED')::integer,
           now()
$$;

-- the delivery service's (role symphony_delivery) -----------------------------------------------

-- Turn new events into deliveries: for up to p_endpoint_limit enabled endpoints with events
-- past their cursor, up to p_event_limit events each. Endpoints another fan-out holds are
-- skipped (SKIP LOCKED), so several delivery services share the work.
CREATE FUNCTION symphony.fan_out_webhook_events(
    p_endpoint_limit integer,
    p_event_limit    integer
) RETURNS TABLE (
    endpoints  integer,
    events     integer,
    deliveries integer
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_endpoint   record;
    v_last       bigint;
    v_seen       integer;
    v_created    integer;
    v_endpoints  integer := 0;
    v_events     integer := 0;
    v_deliveries integer := 0;
BEGIN
    IF p_endpoint_limit IS NULL OR p_endpoint_limit NOT BETWEEN 1 AND 10000
       OR p_event_limit IS NULL OR p_event_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'limits must be between 1 and 10000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'fan_out_webhook_events_limit';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);  -- see "Deliveries commit" above
    FOR v_endpoint IN
        SELECT e.participant_id, e.endpoint_id, e.event_types, e.event_cursor
          FROM webhook_endpoints e
         WHERE e.status = 'ENABLED'
           AND EXISTS (SELECT 1 FROM payment_events ev
                        WHERE ev.participant_id = e.participant_id
                          AND ev.event_seq > e.event_cursor)
         ORDER BY e.updated_at
         LIMIT p_endpoint_limit
           FOR UPDATE OF e SKIP LOCKED
    LOOP
        WITH batch AS (
            SELECT ev.event_seq, ev.event_id, ev.event_type
              FROM payment_events ev
             WHERE ev.participant_id = v_endpoint.participant_id
               AND ev.event_seq > v_endpoint.event_cursor
             ORDER BY ev.event_seq
             LIMIT p_event_limit
        ), made AS (
            INSERT INTO webhook_deliveries (participant_id, endpoint_id, event_seq, event_id)
            SELECT v_endpoint.participant_id, v_endpoint.endpoint_id, b.event_seq, b.event_id
              FROM batch b
             WHERE b.event_type = ANY (v_endpoint.event_types)
            ON CONFLICT (participant_id, endpoint_id, event_id) WHERE replay_of IS NULL
            DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT max(b.event_seq) FROM batch b), (SELECT count(*) FROM batch),
               (SELECT count(*) FROM made)
          INTO v_last, v_seen, v_created;
        IF v_last IS NOT NULL THEN
            UPDATE webhook_endpoints e SET event_cursor = v_last, updated_at = now()
             WHERE e.participant_id = v_endpoint.participant_id
               AND e.endpoint_id = v_endpoint.endpoint_id;
        END IF;
        v_endpoints := v_endpoints + 1;
        v_events := v_events + v_seen;
        v_deliveries := v_deliveries + v_created;
    END LOOP;
    RETURN QUERY SELECT v_endpoints, v_events, v_deliveries;
END
$$;

-- Lease up to p_limit due deliveries of enabled endpoints. A delivery whose lease expired
-- (its service died mid-call) gets its lost attempt recorded as LEASE_EXPIRED first. Each
-- row carries what the call needs: the URL, the event and the sealed live secrets.
CREATE FUNCTION symphony.claim_webhook_deliveries(
    p_worker_id     text,
    p_limit         integer,
    p_lease_seconds integer
) RETURNS TABLE (
    participant_id     text,
    delivery_id        uuid,
    endpoint_id        uuid,
    url                text,
    event_seq          bigint,
    event_id           uuid,
    event_type         text,
    outbox_id          uuid,
    event_created_at   timestamptz,
    payload            jsonb,
    attempt_no         integer,
    lease_token        uuid,
    lease_expires_at   timestamptz,
    secret_ciphertexts bytea[],
    secret_key_ids     text[]
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_pids     text[];
    v_ids      uuid[];
    v_eps      uuid[];
    v_events   uuid[];
    v_counts   integer[];
    v_tokens   uuid[];
    v_claimers text[];
BEGIN
    IF p_worker_id IS NULL OR char_length(p_worker_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'worker_id must be 1-128 characters'
            USING ERRCODE = 'SY020', CONSTRAINT = 'claim_webhook_deliveries_worker';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000'
            USING ERRCODE = 'SY021', CONSTRAINT = 'claim_webhook_deliveries_limit';
    END IF;
    IF p_lease_seconds IS NULL OR p_lease_seconds NOT BETWEEN 1 AND 3600 THEN
        RAISE EXCEPTION 'a delivery lease is 1 to 3600 seconds'
            USING ERRCODE = 'SY022', CONSTRAINT = 'claim_webhook_deliveries_lease';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    -- The due deliveries, oldest first (the due index), locked; their keys as arrays, so
    -- every later statement reaches its rows by key, whatever the tables' sizes.
    SELECT array_agg(x.participant_id), array_agg(x.delivery_id), array_agg(x.endpoint_id),
           array_agg(x.event_id), array_agg(x.attempt_count), array_agg(x.lease_token),
           array_agg(x.claimed_by)
      INTO v_pids, v_ids, v_eps, v_events, v_counts, v_tokens, v_claimers
      FROM (SELECT d.participant_id, d.delivery_id, d.endpoint_id, d.event_id,
                   d.attempt_count, d.lease_token, d.claimed_by
              FROM webhook_deliveries d
              JOIN webhook_endpoints e
                ON e.participant_id = d.participant_id AND e.endpoint_id = d.endpoint_id
             WHERE d.status = 'PENDING'
               AND d.next_attempt_at <= now()
               AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
               AND e.status = 'ENABLED'
             ORDER BY d.next_attempt_at
             LIMIT p_limit
               FOR UPDATE OF d SKIP LOCKED) x;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- A lease that expired: its attempt was lost with its service; recorded before the
    -- delivery is handed out again.
    INSERT INTO webhook_delivery_attempts
        (participant_id, delivery_id, attempt_no, endpoint_id, event_id, worker_id, outcome,
         error_class)
    SELECT u.pid, u.id, u.n, u.ep, u.ev, u.who, 'LEASE_EXPIRED', 'lease_expired'
      FROM unnest(v_pids, v_ids, v_eps, v_events, v_counts, v_tokens, v_claimers)
               AS u(pid, id, ep, ev, n, tok, who)
     WHERE u.tok IS NOT NULL AND u.n >= 1;
    RETURN QUERY
    WITH leased AS (
        UPDATE webhook_deliveries d
           SET attempt_count = d.attempt_count + 1,
               claimed_by = p_worker_id,
               lease_token = gen_random_uuid(),
               lease_expires_at = now() + make_interval(secs => p_lease_seconds)
         WHERE d.delivery_id = ANY (v_ids) AND d.participant_id = ANY (v_pids)
        RETURNING d.participant_id, d.delivery_id, d.endpoint_id, d.event_seq, d.event_id,
                  d.attempt_count, d.lease_token, d.lease_expires_at
    )
    SELECT l.participant_id, l.delivery_id, l.endpoint_id, e.url, l.event_seq, l.event_id,
           ev.event_type, ev.outbox_id, ev.created_at, ev.payload, l.attempt_count,
           l.lease_token, l.lease_expires_at, s.ciphertexts, s.key_ids
      FROM leased l
      -- LIMIT 1 keeps each lookup a probe of its key (never a join over the whole table).
      CROSS JOIN LATERAL (
          SELECT x.url FROM webhook_endpoints x
           WHERE x.participant_id = l.participant_id AND x.endpoint_id = l.endpoint_id
           LIMIT 1) e
      CROSS JOIN LATERAL (
          SELECT x.event_type, x.outbox_id, x.created_at, x.payload FROM payment_events x
           WHERE x.participant_id = l.participant_id AND x.event_seq = l.event_seq
           LIMIT 1) ev
      CROSS JOIN LATERAL (
          SELECT array_agg(x.secret_ciphertext ORDER BY x.secret_no DESC) AS ciphertexts,
                 array_agg(x.key_id ORDER BY x.secret_no DESC) AS key_ids
            FROM webhook_endpoint_secrets x
           WHERE x.participant_id = l.participant_id AND x.endpoint_id = l.endpoint_id
             AND (x.expires_at IS NULL OR x.expires_at > now())
      ) s;
END
$$;

-- Record one attempt's outcome, fenced by the lease token (SY077 when the lease is no longer
-- the caller's: it expired and another service took the delivery, or it ended). p_outcome is
-- DELIVERED, RETRY (next attempt p_retry_after_seconds from now) or FAILED (the schedule ran
-- out). The endpoint turns failing after p_failing_after consecutive failed attempts, or when
-- a delivery fails for good.
CREATE FUNCTION symphony.complete_webhook_delivery(
    p_participant_id      text,
    p_delivery_id         uuid,
    p_lease_token         uuid,
    p_outcome             text,
    p_retry_after_seconds double precision,
    p_http_status         integer,
    p_latency_ms          integer,
    p_error_class         text,
    p_response_excerpt    text,
    p_started_at          timestamptz,
    p_failing_after       integer
) RETURNS TABLE (
    status                 text,
    attempt_no             integer,
    next_attempt_at        timestamptz,
    endpoint_failing       boolean,
    endpoint_became_failing boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row      webhook_deliveries%ROWTYPE;
    v_next     timestamptz;
    v_status   text;
    v_failing  timestamptz;
    v_was      timestamptz;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('DELIVERED', 'RETRY', 'FAILED')
       OR (p_outcome = 'RETRY' AND (p_retry_after_seconds IS NULL
                                    OR p_retry_after_seconds NOT BETWEEN 0 AND 604800))
       OR p_failing_after IS NULL OR p_failing_after < 1 THEN
        RAISE EXCEPTION 'an outcome is DELIVERED, RETRY (with a delay of 0-604800 s) or FAILED'
            USING ERRCODE = 'SY074', CONSTRAINT = 'complete_webhook_delivery_outcome';
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO v_row FROM webhook_deliveries d
     WHERE d.participant_id = p_participant_id AND d.delivery_id = p_delivery_id
       FOR UPDATE;
    IF NOT FOUND OR v_row.status <> 'PENDING' OR v_row.lease_token IS DISTINCT FROM p_lease_token
    THEN
        RAISE EXCEPTION 'the lease on this delivery is no longer held by the caller'
            USING ERRCODE = 'SY077', CONSTRAINT = 'complete_webhook_delivery_lease';
    END IF;
    v_status := CASE p_outcome WHEN 'DELIVERED' THEN 'DELIVERED'
                               WHEN 'FAILED' THEN 'FAILED' ELSE 'PENDING' END;
    v_next := CASE WHEN p_outcome = 'RETRY'
                   THEN now() + make_interval(secs => p_retry_after_seconds) END;
    INSERT INTO webhook_delivery_attempts
        (participant_id, delivery_id, attempt_no, endpoint_id, event_id, worker_id, started_at,
         outcome, http_status, latency_ms, error_class, response_excerpt, next_attempt_at)
    VALUES (p_participant_id, p_delivery_id, v_row.attempt_count, v_row.endpoint_id,
            v_row.event_id, v_row.claimed_by, p_started_at, p_outcome, p_http_status,
            p_latency_ms, p_error_class, p_response_excerpt, v_next);
    UPDATE webhook_deliveries d
       SET status = v_status,
           next_attempt_at = coalesce(v_next, d.next_attempt_at),
           finished_at = CASE WHEN v_status = 'PENDING' THEN NULL ELSE now() END,
           claimed_by = NULL, lease_token = NULL, lease_expires_at = NULL
     WHERE d.participant_id = p_participant_id AND d.delivery_id = p_delivery_id;
    SELECT e.failing_since INTO v_was FROM webhook_endpoints e
     WHERE e.participant_id = p_participant_id AND e.endpoint_id = v_row.endpoint_id
       FOR UPDATE;
    IF p_outcome = 'DELIVERED' THEN
        UPDATE webhook_endpoints e
           SET consecutive_failures = 0, failing_since = NULL, last_success_at = now()
         WHERE e.participant_id = p_participant_id AND e.endpoint_id = v_row.endpoint_id
        RETURNING e.failing_since INTO v_failing;
    ELSE
        UPDATE webhook_endpoints e
           SET consecutive_failures = e.consecutive_failures + 1,
               last_failure_at = now(),
               last_error_class = p_error_class,
               failing_since = CASE
                   WHEN e.failing_since IS NOT NULL THEN e.failing_since
                   WHEN e.consecutive_failures + 1 >= p_failing_after OR p_outcome = 'FAILED'
                       THEN now()
               END
         WHERE e.participant_id = p_participant_id AND e.endpoint_id = v_row.endpoint_id
        RETURNING e.failing_since INTO v_failing;
    END IF;
    RETURN QUERY SELECT v_status, v_row.attempt_count, v_next, v_failing IS NOT NULL,
                        v_was IS NULL AND v_failing IS NOT NULL;
END
$$;

-- grants ------------------------------------------------------------------------------------------

REVOKE ALL ON symphony.webhook_endpoints, symphony.webhook_endpoint_secrets,
              symphony.webhook_deliveries, symphony.webhook_delivery_attempts FROM PUBLIC;
REVOKE ALL ON FUNCTION
    symphony.refuse_webhook_attempt_change(),
    symphony.webhook_check_secret(bytea, text),
    symphony.create_webhook_endpoint(text, uuid, text, text[], text, bytea, text),
    symphony.participant_webhook_endpoints(text),
    symphony.delete_webhook_endpoint(text, uuid),
    symphony.rotate_webhook_endpoint_secret(text, uuid, bytea, text, integer),
    symphony.ops_webhook_endpoints(text, integer),
    symphony.set_webhook_endpoint_enabled(uuid, boolean, text),
    symphony.ops_webhook_deliveries(uuid, integer),
    symphony.replay_webhook_delivery(uuid, text),
    symphony.webhook_health(),
    symphony.fan_out_webhook_events(integer, integer),
    symphony.claim_webhook_deliveries(text, integer, integer),
    symphony.complete_webhook_delivery(text, uuid, uuid, text, double precision, integer,
                                       integer, text, text, timestamptz, integer)
    FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    symphony.create_webhook_endpoint(text, uuid, text, text[], text, bytea, text),
    symphony.participant_webhook_endpoints(text),
    symphony.delete_webhook_endpoint(text, uuid),
    symphony.rotate_webhook_endpoint_secret(text, uuid, bytea, text, integer)
    TO symphony_webhooks;

GRANT EXECUTE ON FUNCTION
    symphony.ops_webhook_endpoints(text, integer),
    symphony.set_webhook_endpoint_enabled(uuid, boolean, text),
    symphony.ops_webhook_deliveries(uuid, integer),
    symphony.replay_webhook_delivery(uuid, text),
    symphony.webhook_health()
    TO symphony_webhooks, symphony_control;

GRANT EXECUTE ON FUNCTION
    symphony.fan_out_webhook_events(integer, integer),
    symphony.claim_webhook_deliveries(text, integer, integer),
    symphony.complete_webhook_delivery(text, uuid, uuid, text, double precision, integer,
                                       integer, text, text, timestamptz, integer),
    symphony.webhook_health()
    TO symphony_delivery;

-- Auditors read the delivery history (no secrets, no lease tokens).
GRANT SELECT (participant_id, delivery_id, endpoint_id, event_seq, event_id, status,
              attempt_count, next_attempt_at, replay_of, replay_requested_by, created_at,
              finished_at)
    ON symphony.webhook_deliveries TO symphony_auditor;
GRANT SELECT ON symphony.webhook_delivery_attempts TO symphony_auditor;
