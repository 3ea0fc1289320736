-- symphony.refuse_webhook_attempt_change: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0018_webhooks.sql.

CREATE OR REPLACE FUNCTION symphony.refuse_webhook_attempt_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'webhook delivery attempts are append-only'
        USING ERRCODE = 'P0001', CONSTRAINT = 'webhook_delivery_attempts_append_only';
END
$$;

REVOKE ALL ON FUNCTION symphony.refuse_webhook_attempt_change()
    FROM PUBLIC;
