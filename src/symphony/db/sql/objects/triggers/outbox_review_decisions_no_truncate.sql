-- trigger outbox_review_decisions_no_truncate on symphony.outbox_review_decisions: the running
-- definition, applied again whenever this file changes (a repeatable object: see
-- sql/objects/README.md). Moved here from its last definition in migration
-- 0006_money_safety.sql.

DROP TRIGGER IF EXISTS outbox_review_decisions_no_truncate
    ON symphony.outbox_review_decisions;

CREATE TRIGGER outbox_review_decisions_no_truncate
    BEFORE TRUNCATE ON symphony.outbox_review_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.refuse_history_rewrite();

ALTER TABLE symphony.outbox_review_decisions
    ENABLE ALWAYS TRIGGER outbox_review_decisions_no_truncate;
