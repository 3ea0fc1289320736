-- symphony.digest_micros: the running definition, applied again whenever this file changes (a
-- repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0009_tamper_evident_ledger.sql.

CREATE OR REPLACE FUNCTION symphony.digest_micros(p_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT (extract(epoch FROM p_at) * 1000000)::bigint::text
$$;

REVOKE ALL ON FUNCTION symphony.digest_micros(timestamp with time zone)
    FROM PUBLIC;
