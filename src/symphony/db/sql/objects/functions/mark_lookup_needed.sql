-- symphony.mark_lookup_needed: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0010_distribution_keys.sql.

CREATE OR REPLACE FUNCTION symphony.mark_lookup_needed() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO outbox_lookup_marks (outbox_id, participant_id, attempt_no, reason)
    VALUES (NEW.outbox_id, NEW.participant_id, NEW.last_attempt_no,
            left(coalesce(NEW.last_error_code, '-'), 64))
    ON CONFLICT ON CONSTRAINT outbox_lookup_marks_pkey DO NOTHING;
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION symphony.mark_lookup_needed()
    FROM PUBLIC;
