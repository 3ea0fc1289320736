-- symphony.refuse_history_rewrite: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0003_ledger_rules.sql.

CREATE OR REPLACE FUNCTION symphony.refuse_history_rewrite() RETURNS trigger
LANGUAGE plpgsql
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'history is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'P0001', CONSTRAINT = TG_TABLE_NAME || '_append_only';
END
$$;

-- Trigger functions as the owner. Before PostgreSQL 18 a deferred constraint trigger runs as
-- the role current at COMMIT (symphony_ingest, symphony_executor), which may read none of
-- the outbox tables, so the commit-time I7 check failed for every enqueue and completion.
-- Each trigger function that reads or writes outbox tables now runs as the owner whoever
-- fires it, with the search_path pinned since 0003. (The server version gate is raised to 18,
-- the version the test suite runs on.)
ALTER FUNCTION symphony.refuse_history_rewrite() SECURITY DEFINER;

REVOKE ALL ON FUNCTION symphony.refuse_history_rewrite()
    FROM PUBLIC;
