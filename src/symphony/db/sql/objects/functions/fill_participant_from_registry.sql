-- symphony.fill_participant_from_registry: the running definition, applied again whenever this
-- file changes (a repeatable object: see sql/objects/README.md). Moved here from its last
-- definition in migration 0010_distribution_keys.sql.

-- Claim, complete, repair and the review append rows by outbox_id. The registry knows whose
-- item it is; the foreign key above refuses a participant_id that does not match it. Named
-- "00_" so it fires before every other BEFORE INSERT trigger of the table (they fire in name
-- order), whichever a later migration adds: each of them sees the row's participant.
CREATE OR REPLACE FUNCTION symphony.fill_participant_from_registry() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    SELECT r.participant_id INTO NEW.participant_id
      FROM payment_instruction_registry r
     WHERE r.outbox_id = NEW.outbox_id;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION symphony.fill_participant_from_registry()
    FROM PUBLIC;
