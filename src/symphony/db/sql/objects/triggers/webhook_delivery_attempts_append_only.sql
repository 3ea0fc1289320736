-- trigger webhook_delivery_attempts_append_only on symphony.webhook_delivery_attempts: the
-- running definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration 0018_webhooks.sql.

DROP TRIGGER IF EXISTS webhook_delivery_attempts_append_only
    ON symphony.webhook_delivery_attempts;

CREATE TRIGGER webhook_delivery_attempts_append_only
    BEFORE UPDATE OR DELETE ON symphony.webhook_delivery_attempts
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_webhook_attempt_change();

ALTER TABLE symphony.webhook_delivery_attempts
    ENABLE ALWAYS TRIGGER webhook_delivery_attempts_append_only;
