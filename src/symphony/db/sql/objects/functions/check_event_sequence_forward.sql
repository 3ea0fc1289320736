-- symphony.check_event_sequence_forward: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0016_payment_events.sql.

-- The counter only moves forward and is never removed (a lower number would be handed out
-- twice).
CREATE OR REPLACE FUNCTION symphony.check_event_sequence_forward() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'participant event sequences are never removed'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_event_sequences_forward_only';
    END IF;
    IF NEW.participant_id <> OLD.participant_id
       OR NEW.last_event_seq <= OLD.last_event_seq THEN
        RAISE EXCEPTION 'participant event sequences only move forward'
            USING ERRCODE = 'P0001', CONSTRAINT = 'participant_event_sequences_forward_only';
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION symphony.check_event_sequence_forward()
    FROM PUBLIC;
