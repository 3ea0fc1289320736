-- symphony.webhook_check_secret: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0018_webhooks.sql.

CREATE OR REPLACE FUNCTION symphony.webhook_check_secret(p_ciphertext bytea, p_key_id text) RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    IF p_ciphertext IS NULL OR octet_length(p_ciphertext) <> 60
       OR p_key_id IS NULL OR p_key_id !~ '^[0-9a-f]{16}$' THEN
        RAISE EXCEPTION 'a sealed secret is 60 bytes with a 16-hex-digit key id'
            USING ERRCODE = 'SY074', CONSTRAINT = 'webhook_secret_sealed';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION symphony.webhook_check_secret(bytea, text)
    FROM PUBLIC;
