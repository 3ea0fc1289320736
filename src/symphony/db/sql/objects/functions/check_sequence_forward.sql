-- symphony.check_sequence_forward: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0003_ledger_rules.sql.

CREATE OR REPLACE FUNCTION symphony.check_sequence_forward() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'participant sequences are never removed'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_outbox_sequences_forward_only';
    END IF;
    IF NEW.participant_id <> OLD.participant_id
       OR NEW.last_sequence_id <= OLD.last_sequence_id THEN
        RAISE EXCEPTION 'participant sequences only move forward'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_outbox_sequences_forward_only';
    END IF;
    RETURN NEW;
END
$$;

ALTER FUNCTION symphony.check_sequence_forward() SECURITY DEFINER;

REVOKE ALL ON FUNCTION symphony.check_sequence_forward()
    FROM PUBLIC;
