-- symphony.check_cancel_is_clean: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0023_cancellation.sql.

-- A CANCELED row only for an item no attempt of which may have reached the rail: no lookup
-- mark (the durable trace of an ambiguous attempt or a zombie, 0009) and no live lease.
CREATE OR REPLACE FUNCTION symphony.check_cancel_is_clean() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox_lookup_marks m
                WHERE m.outbox_id = NEW.outbox_id AND m.participant_id = NEW.participant_id)
       OR EXISTS (SELECT 1 FROM payment_outbox_pending p
                   WHERE p.outbox_id = NEW.outbox_id AND p.participant_id = NEW.participant_id
                     AND (p.lease_token IS NOT NULL OR p.needs_lookup)) THEN
        RAISE EXCEPTION 'an item that may have reached the rail cannot be canceled'
            USING ERRCODE = 'SY300', CONSTRAINT = 'payment_outbox_attempts_cancel_is_clean';
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION symphony.check_cancel_is_clean()
    FROM PUBLIC;
