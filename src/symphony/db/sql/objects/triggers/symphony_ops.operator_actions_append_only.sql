-- trigger operator_actions_append_only on symphony_ops.operator_actions: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration 0014_operators.sql.

DROP TRIGGER IF EXISTS operator_actions_append_only
    ON symphony_ops.operator_actions;

CREATE TRIGGER operator_actions_append_only
    BEFORE UPDATE OR DELETE ON symphony_ops.operator_actions
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony_ops.operator_actions
    ENABLE ALWAYS TRIGGER operator_actions_append_only;
