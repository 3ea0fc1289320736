-- symphony.check_pending_monotonic: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0003_ledger_rules.sql.

CREATE OR REPLACE FUNCTION symphony.check_pending_monotonic() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.outbox_id <> OLD.outbox_id
       OR NEW.participant_id <> OLD.participant_id
       OR NEW.sequence_id <> OLD.sequence_id THEN
        RAISE EXCEPTION 'a pending item keeps its identity'
            USING ERRCODE = 'SY303', CONSTRAINT = 'payment_outbox_pending_identity';
    END IF;
    IF NEW.attempt_count < OLD.attempt_count OR NEW.last_attempt_no < OLD.last_attempt_no THEN
        RAISE EXCEPTION 'attempt counters never decrease'
            USING ERRCODE = 'SY301', CONSTRAINT = 'payment_outbox_pending_attempts_monotonic';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

ALTER FUNCTION symphony.check_pending_monotonic() SECURITY DEFINER;

REVOKE ALL ON FUNCTION symphony.check_pending_monotonic()
    FROM PUBLIC;
