-- symphony.check_operator_reason: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0014_operators.sql.

-- The reason every action needs: 1-500 characters, no control or bidirectional characters.
CREATE OR REPLACE FUNCTION symphony.check_operator_reason(p_reason text) RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF p_reason IS NULL OR char_length(btrim(p_reason)) NOT BETWEEN 1 AND 500
       OR p_reason ~ '[\u0001-\u001F\u007F-\u009F\u200E\u200F\u202A-\u202E\u2066-\u2069]' THEN
        RAISE EXCEPTION 'an operator action needs a reason of 1-500 printable characters'
            USING ERRCODE = 'SY063', CONSTRAINT = 'operator_action_reason';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION symphony.check_operator_reason(text)
    FROM PUBLIC;
