-- 0001 — roles, login principals and the schema.
--
-- Why: the database, not the application, is the boundary. Every object belongs to a NOLOGIN
-- owner, so no connection can act as the owner. The five runtime roles are NOLOGIN too; a
-- service reaches its runtime role only through SET LOCAL ROLE from its own login principal.
-- A principal holds no privilege itself (INHERIT FALSE) and may switch only to its own role
-- (SET TRUE on that one grant), so a compromised ingest service cannot become the executor.
--
-- Roles are cluster-wide while migrations are per database: creation is guarded, and the
-- attributes are re-asserted on every apply so a hand-edited role is put back in line.

DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY[
        'symphony_owner',
        'symphony_control',
        'symphony_ingest',
        'symphony_executor',
        'symphony_readonly',
        'symphony_auditor'
    ] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I', r);
        END IF;
        EXECUTE format(
            'ALTER ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT '
            'NOREPLICATION NOBYPASSRLS', r);
    END LOOP;

    -- Login principals: one per service. Passwords are set by provisioning (never in a
    -- migration, which is checked into source control).
    FOREACH r IN ARRAY ARRAY[
        'symphony_control_svc',
        'symphony_ingest_svc',
        'symphony_executor_svc',
        'symphony_reader_svc'
    ] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I', r);
        END IF;
        EXECUTE format(
            'ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT '
            'NOREPLICATION NOBYPASSRLS', r);
    END LOOP;
END
$roles$;

-- PostgreSQL 16+: membership that grants the right to SET ROLE and nothing else.
GRANT symphony_control  TO symphony_control_svc  WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;
GRANT symphony_ingest   TO symphony_ingest_svc   WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;
GRANT symphony_executor TO symphony_executor_svc WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;
GRANT symphony_readonly TO symphony_reader_svc   WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;
GRANT symphony_auditor  TO symphony_reader_svc   WITH INHERIT FALSE, SET TRUE, ADMIN FALSE;

CREATE SCHEMA symphony AUTHORIZATION symphony_owner;
REVOKE ALL ON SCHEMA symphony FROM PUBLIC;

-- Functions are executable by PUBLIC by default; objects created later by the owner must not be.
ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner IN SCHEMA symphony
    REVOKE ALL ON TABLES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner IN SCHEMA symphony
    REVOKE ALL ON SEQUENCES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner IN SCHEMA symphony
    REVOKE ALL ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE symphony_owner IN SCHEMA symphony
    REVOKE ALL ON TYPES FROM PUBLIC;
