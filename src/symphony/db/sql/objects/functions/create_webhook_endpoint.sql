-- symphony.create_webhook_endpoint: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0018_webhooks.sql.

CREATE OR REPLACE FUNCTION symphony.create_webhook_endpoint(
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

REVOKE ALL ON FUNCTION symphony.create_webhook_endpoint(text, uuid, text, text[], text, bytea, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.create_webhook_endpoint(text, uuid, text, text[], text, bytea, text)
    TO symphony_webhooks;
