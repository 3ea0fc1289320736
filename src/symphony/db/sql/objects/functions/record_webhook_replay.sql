-- symphony.record_webhook_replay: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0024_ops_replay_webhook_delivery.sql.

-- The one replay path: serialize on the original delivery, check for a waiting replay and for
-- a deleted endpoint, replay (0018), record. Owner only: the two wrappers below name the actor.
CREATE OR REPLACE FUNCTION symphony.record_webhook_replay(
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

REVOKE ALL ON FUNCTION symphony.record_webhook_replay(uuid, uuid, text, text, text)
    FROM PUBLIC;
