-- symphony.check_pending_matches_ledger: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0023_cancellation.sql.

-- Changed from 0010 only in the terminal states.
CREATE OR REPLACE FUNCTION symphony.check_pending_matches_ledger() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_outbox_id   uuid;
    v_participant text;
    v_terminal    boolean;
    v_pending     boolean;
BEGIN
    v_outbox_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.outbox_id ELSE NEW.outbox_id END;
    v_participant := CASE WHEN TG_OP = 'DELETE' THEN OLD.participant_id
                          ELSE NEW.participant_id END;
    v_terminal := EXISTS (
        SELECT 1 FROM payment_outbox_attempts a
         WHERE a.outbox_id = v_outbox_id AND a.participant_id = v_participant
           AND a.state IN ('DISPATCHED', 'FAILED', 'CANCELED'));
    v_pending := EXISTS (
        SELECT 1 FROM payment_outbox_pending p
         WHERE p.outbox_id = v_outbox_id AND p.participant_id = v_participant);
    IF v_terminal = v_pending THEN
        RAISE EXCEPTION 'an item is pending if and only if it has no terminal ledger row'
            USING ERRCODE = 'SY302', CONSTRAINT = 'payment_outbox_pending_matches_ledger',
                  DETAIL = format('outbox item %s: pending=%s terminal=%s',
                                  v_outbox_id, v_pending, v_terminal);
    END IF;
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION symphony.check_pending_matches_ledger()
    FROM PUBLIC;
