-- symphony.seal_attempt: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0010_distribution_keys.sql.

-- The audit's triggers read within the item's participant: the seal finds the previous link of
-- the chain by (outbox_id, participant_id) (filled by the 00_ trigger, which fires first), and
-- the lookup mark takes the participant from the pending row it fires on. Changed from the
-- tamper-evident ledger's migration only in the participant_id conditions.
CREATE OR REPLACE FUNCTION symphony.seal_attempt() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_previous bytea;
BEGIN
    IF NEW.attempt_no = 1 THEN
        SELECT r.instruction_digest INTO v_previous
          FROM payment_instruction_registry r
         WHERE r.outbox_id = NEW.outbox_id AND r.participant_id = NEW.participant_id;
    ELSE
        SELECT a.row_digest INTO v_previous
          FROM payment_outbox_attempts a
         WHERE a.outbox_id = NEW.outbox_id AND a.attempt_no = NEW.attempt_no - 1
           AND a.participant_id = NEW.participant_id;
    END IF;
    NEW.lease_digest := sha256(uuid_send(NEW.lease_token));
    NEW.row_digest := attempt_digest(
        v_previous, NEW.outbox_id, NEW.attempt_no, NEW.state, NEW.worker_id, NEW.error_code,
        NEW.error_detail, NEW.rail_transaction_id, NEW.recorded_at, NEW.recorded_by,
        NEW.lease_digest);
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION symphony.seal_attempt()
    FROM PUBLIC;
