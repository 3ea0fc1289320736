-- symphony.webhook_health: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0028_webhook_probe.sql.

-- The health summary the metrics and the dashboard show. New: endpoints_held (enabled
-- endpoints sending one probe at a time) and events_waiting (events past the cursors of
-- enabled endpoints, not yet made deliveries: all types, so an upper bound of what each
-- endpoint will be sent). One index probe per enabled endpoint.
CREATE OR REPLACE FUNCTION symphony.webhook_health() RETURNS TABLE (
    endpoints_enabled    integer,
    endpoints_disabled   integer,
    endpoints_failing    integer,
    endpoints_held       integer,
    deliveries_pending   integer,
    deliveries_due       integer,
    oldest_due_at        timestamptz,
    deliveries_failed    integer,
    events_waiting       bigint,
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
           (SELECT count(*) FROM webhook_endpoints e
             WHERE e.status = 'ENABLED' AND e.held_since IS NOT NULL)::integer,
           (SELECT count(*) FROM webhook_deliveries d WHERE d.status = 'PENDING')::integer,
           (SELECT count(*) FROM webhook_deliveries d
             WHERE d.status = 'PENDING' AND d.next_attempt_at <= now())::integer,
           (SELECT min(d.next_attempt_at) FROM webhook_deliveries d
             WHERE d.status = 'PENDING' AND d.next_attempt_at <= now()),
           (SELECT count(*) FROM webhook_deliveries d WHERE d.status = 'FAILED')::integer,
           (SELECT coalesce(sum(greatest(0, w.last - e.event_cursor)), 0)::bigint
              FROM webhook_endpoints e
             CROSS JOIN LATERAL (
                 SELECT max(ev.event_seq) AS last FROM payment_events ev
                  WHERE ev.participant_id = e.participant_id) w
             WHERE e.status = 'ENABLED'),
           now()
$$;

REVOKE ALL ON FUNCTION symphony.webhook_health()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.webhook_health()
    TO symphony_control, symphony_delivery, symphony_webhooks;
