-- symphony.digest_field: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0009_tamper_evident_ledger.sql.

CREATE OR REPLACE FUNCTION symphony.digest_field(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN p_value IS NULL THEN '-'
                ELSE char_length(p_value)::text || ':' || p_value END
$$;

REVOKE ALL ON FUNCTION symphony.digest_field(text)
    FROM PUBLIC;
