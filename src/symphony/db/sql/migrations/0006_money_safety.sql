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
