-- 0024 — replaying a webhook delivery is an accountable operator action.
--
-- Why:
-- * The webhooks migration let the API (as symphony_webhooks) and the command line (as
--   symphony_control) call replay_webhook_delivery directly, naming the requester in free
--   text: a replay left no operator action, and the API's record said only which token id the
--   API claimed to act for. Like every other operator action (the operators migration), a
--   replay from the API now runs as symphony_operator through ops_replay_webhook_delivery,
--   which verifies the acting token itself (id, salted hash, live, OPERATOR scope) and records
--   REPLAY_WEBHOOK_DELIVERY in symphony_ops.operator_actions with the token's id and label and
--   the reason, in the replay's own transaction. The command line replays through
--   replay_webhook_delivery_by_operator (control), recorded the same way with the operator's
--   name. replay_webhook_delivery itself becomes nobody's but the owner's: every replay is
--   recorded.
-- * The record names the payment the event is about (outbox_id), so a replay shows in that
--   item's operator history next to its resolve and cancel.
-- * A replay that lost a race writes nothing and says where things stand, as a result row
--   (not an error: the caller answers 409 with it):
--     REPLAY_PENDING    a replay of the same original delivery is already waiting to be sent
--                       (two operators, or one double click): the waiting replay is returned;
--                       a second one would send the event twice more;
--     ENDPOINT_DELETED  the endpoint was deleted (its pending deliveries abandoned) meanwhile.
--   Replays of one original are serialized by a transaction-scoped advisory lock on it, and
--   the endpoint row is held FOR SHARE, so a concurrent deletion either waits for the replay
--   (and abandons it with the endpoint's other pending deliveries) or is seen. The advisory
--   lock is taken first and nobody else takes it: no lock cycle with the delivery service's
--   completion or with a deletion (both lock the endpoint row, never the advisory key).
-- * The pending replays of an original are found through a small partial index (pending
--   replays only), not through the endpoint's whole delivery history.
-- SQLSTATEs: none new (bad input keeps the codes of the webhooks and operators migrations).

SET LOCAL ROLE symphony_owner;

CREATE INDEX webhook_deliveries_pending_replay_idx
    ON symphony.webhook_deliveries (participant_id, replay_of)
    WHERE replay_of IS NOT NULL AND status = 'PENDING';

-- The one replay path: serialize on the original delivery, check for a waiting replay and for
-- a deleted endpoint, replay (0018), record. Owner only: the two wrappers below name the actor.
CREATE FUNCTION symphony.record_webhook_replay(
    p_delivery_id    uuid,
    p_actor_token_id uuid,
    p_actor_label    text,
    p_requested_by   text,
    p_reason         text
) RETURNS TABLE (
    action_id       bigint,
    result          text,
    delivery_id     uuid,
    replay_of       uuid,
    participant_id  text,
    endpoint_id     uuid,
    event_id        uuid,
    outbox_id       uuid,
    status          text,
    endpoint_status text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row       webhook_deliveries%ROWTYPE;
    v_root      uuid;
    v_endpoint  text;
    v_waiting   webhook_deliveries%ROWTYPE;
    v_outbox    uuid;
    v_type      text;
    v_new       record;
    v_action_id bigint;
BEGIN
    PERFORM check_operator_reason(p_reason);
    SELECT * INTO v_row FROM webhook_deliveries d WHERE d.delivery_id = p_delivery_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook delivery with this id'
            USING ERRCODE = 'SY076', CONSTRAINT = 'replay_webhook_delivery_known';
    END IF;
    v_root := coalesce(v_row.replay_of, v_row.delivery_id);
    -- Key space 7303 (0017's notifier uses 7302): one replay of an original at a time.
    PERFORM pg_advisory_xact_lock(7303, hashtext(v_root::text));
    SELECT e.status INTO v_endpoint FROM webhook_endpoints e
     WHERE e.participant_id = v_row.participant_id AND e.endpoint_id = v_row.endpoint_id
       FOR SHARE;
    SELECT ev.outbox_id, ev.event_type INTO v_outbox, v_type FROM payment_events ev
     WHERE ev.participant_id = v_row.participant_id AND ev.event_seq = v_row.event_seq;
    IF v_endpoint = 'DELETED' THEN
        RETURN QUERY SELECT NULL::bigint, 'ENDPOINT_DELETED'::text, v_row.delivery_id,
                            v_row.replay_of, v_row.participant_id, v_row.endpoint_id,
                            v_row.event_id, v_outbox, v_row.status, v_endpoint;
        RETURN;
    END IF;
    SELECT * INTO v_waiting FROM webhook_deliveries d
     WHERE d.participant_id = v_row.participant_id AND d.replay_of = v_root
       AND d.status = 'PENDING'
     ORDER BY d.created_at
     LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT NULL::bigint, 'REPLAY_PENDING'::text, v_waiting.delivery_id,
                            v_waiting.replay_of, v_waiting.participant_id,
                            v_waiting.endpoint_id, v_waiting.event_id, v_outbox,
                            v_waiting.status, v_endpoint;
        RETURN;
    END IF;
    SELECT * INTO v_new FROM replay_webhook_delivery(p_delivery_id, p_requested_by) r;
    INSERT INTO symphony_ops.operator_actions
        (action, outbox_id, participant_id, target, actor_token_id, actor_label, reason, outcome)
    VALUES ('REPLAY_WEBHOOK_DELIVERY', v_outbox, v_row.participant_id, p_delivery_id::text,
            p_actor_token_id, p_actor_label, p_reason,
            jsonb_build_object('replay_delivery_id', v_new.delivery_id,
                               'replay_of', v_new.replay_of,
                               'endpoint_id', v_new.endpoint_id,
                               'event_id', v_new.event_id,
                               'event_type', v_type))
    RETURNING operator_actions.action_id INTO v_action_id;
    RETURN QUERY SELECT v_action_id, 'REPLAYED'::text, v_new.delivery_id, v_new.replay_of,
                        v_new.participant_id, v_new.endpoint_id, v_new.event_id, v_outbox,
                        'PENDING'::text, v_endpoint;
END
$$;

-- The operator API's replay: the acting token verified by the database.
CREATE FUNCTION symphony.ops_replay_webhook_delivery(
    p_token_id    uuid,
    p_secret_hash bytea,
    p_delivery_id uuid,
    p_reason      text
) RETURNS TABLE (
    action_id       bigint,
    result          text,
    delivery_id     uuid,
    replay_of       uuid,
    participant_id  text,
    endpoint_id     uuid,
    event_id        uuid,
    outbox_id       uuid,
    status          text,
    endpoint_status text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_actor record;
BEGIN
    SELECT * INTO v_actor FROM operator_actor(p_token_id, p_secret_hash);
    RETURN QUERY
    SELECT * FROM record_webhook_replay(p_delivery_id, v_actor.token_id, v_actor.label,
                                        'operator:token:' || v_actor.token_id::text, p_reason);
END
$$;

-- The command line's replay (control): the operator names themself, as for `review resolve`.
CREATE FUNCTION symphony.replay_webhook_delivery_by_operator(
    p_delivery_id  uuid,
    p_requested_by text,
    p_reason       text
) RETURNS TABLE (
    action_id       bigint,
    result          text,
    delivery_id     uuid,
    replay_of       uuid,
    participant_id  text,
    endpoint_id     uuid,
    event_id        uuid,
    outbox_id       uuid,
    status          text,
    endpoint_status text
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    -- The name must be one replay_webhook_delivery accepts before anything is locked.
    IF p_requested_by IS NULL OR char_length(p_requested_by) NOT BETWEEN 1 AND 200
       OR p_requested_by ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'who asks for the replay: 1-200 characters without control characters'
            USING ERRCODE = 'SY074', CONSTRAINT = 'replay_webhook_delivery_requester';
    END IF;
    RETURN QUERY
    SELECT * FROM record_webhook_replay(p_delivery_id, NULL, p_requested_by, p_requested_by,
                                        p_reason);
END
$$;

RESET ROLE;

REVOKE ALL ON FUNCTION
    symphony.record_webhook_replay(uuid, uuid, text, text, text),
    symphony.ops_replay_webhook_delivery(uuid, bytea, uuid, text),
    symphony.replay_webhook_delivery_by_operator(uuid, text, text)
    FROM PUBLIC;
-- Every replay is recorded: the unrecorded one is the wrappers' alone.
REVOKE EXECUTE ON FUNCTION symphony.replay_webhook_delivery(uuid, text)
    FROM symphony_webhooks, symphony_control;

GRANT EXECUTE ON FUNCTION symphony.ops_replay_webhook_delivery(uuid, bytea, uuid, text)
    TO symphony_operator;
GRANT EXECUTE ON FUNCTION symphony.replay_webhook_delivery_by_operator(uuid, text, text)
    TO symphony_control;
