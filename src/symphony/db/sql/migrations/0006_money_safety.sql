-- 0006 — money-safety fixes from review.
--
-- Default privileges. `ALTER DEFAULT PRIVILEGES ... IN SCHEMA ... REVOKE` (0001) can only take
-- away what an earlier schema-level GRANT added; it cannot remove PostgreSQL's built-in
-- default (EXECUTE on functions and USAGE on types for PUBLIC), so pg_default_acl stayed empty
-- and every function a later migration creates would be executable by every runtime role.
-- The global form (no IN SCHEMA) records a default for the owner that does remove them: a new
-- function or type is usable only by the roles a migration grants it to.

ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner REVOKE USAGE ON TYPES FROM PUBLIC;

-- The HTTP API's own login: it writes as symphony_ingest and reads as symphony_readonly, and
-- may become nothing else (no executor, no control), so a compromised API can neither claim
-- nor complete an item. Created like the principals of 0001: guarded, attributes re-asserted.
DO $api$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'symphony_api_svc') THEN
        CREATE ROLE symphony_api_svc;
    END IF;
    ALTER ROLE symphony_api_svc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
        NOREPLICATION NOBYPASSRLS;
END
$api$;
GRANT symphony_ingest   TO symphony_api_svc WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;
GRANT symphony_readonly TO symphony_api_svc WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;

-- A service that runs with only its own principal's DSN must still be able to tell whether
-- the schema matches its code (readiness, "run symphony migrate"). The migration record is
-- not secret; reading it is all the runtime roles get in symphony_meta.
GRANT USAGE ON SCHEMA symphony_meta
    TO symphony_control, symphony_ingest, symphony_executor, symphony_readonly, symphony_auditor;
GRANT SELECT ON symphony_meta.schema_migrations
    TO symphony_control, symphony_ingest, symphony_executor, symphony_readonly, symphony_auditor;
