-- trigger outbox_review_decisions_append_only on symphony.outbox_review_decisions: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0006_money_safety.sql.

DROP TRIGGER IF EXISTS outbox_review_decisions_append_only
    ON symphony.outbox_review_decisions;

CREATE TRIGGER outbox_review_decisions_append_only
    BEFORE UPDATE OR DELETE ON symphony.outbox_review_decisions
    FOR EACH ROW EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.outbox_review_decisions
    ENABLE ALWAYS TRIGGER outbox_review_decisions_append_only;
