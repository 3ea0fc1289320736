-- symphony.add_participant: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0007_participants_and_tokens.sql.

CREATE OR REPLACE FUNCTION symphony.add_participant(
    p_participant_id text,
    p_display_name   text
) RETURNS SETOF symphony.participants
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF p_participant_id IS NULL OR p_participant_id !~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$' THEN
        RAISE EXCEPTION 'participant_id must be 1-64 letters, digits, ".", "_", ":" or "-"'
            USING ERRCODE = 'SY013', CONSTRAINT = 'add_participant_id';
    END IF;
    IF p_display_name IS NULL OR char_length(p_display_name) NOT BETWEEN 1 AND 200
       OR p_display_name ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'display_name must be 1-200 characters without control characters'
            USING ERRCODE = 'SY035', CONSTRAINT = 'add_participant_display_name';
    END IF;
    RETURN QUERY
    INSERT INTO participants AS pt (participant_id, display_name)
    VALUES (p_participant_id, p_display_name)
    ON CONFLICT ON CONSTRAINT participants_pkey DO NOTHING
    RETURNING pt.*;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'a participant with this id exists already'
            USING ERRCODE = 'SY033', CONSTRAINT = 'add_participant_exists';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION symphony.add_participant(text, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.add_participant(text, text)
    TO symphony_control;
