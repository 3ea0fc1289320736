-- symphony.outbox_supervisor_status: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0006_money_safety.sql.

-- The supervisor view counts items under review on their own (they are neither due nor
-- scheduled: nothing will happen to them until an operator decides).
CREATE OR REPLACE VIEW symphony.outbox_supervisor_status
WITH (security_barrier = true) AS
SELECT
    count(*) FILTER (WHERE p.lease_token IS NULL AND p.next_attempt_at <= now()
                       AND p.review_reason IS NULL)                               AS due,
    count(*) FILTER (WHERE p.lease_token IS NULL AND p.next_attempt_at > now()
                       AND p.review_reason IS NULL)                               AS scheduled,
    count(*) FILTER (WHERE p.lease_token IS NOT NULL AND p.lease_expires_at > now())
                                                                                  AS dispatching,
    count(*) FILTER (WHERE p.lease_token IS NOT NULL AND p.lease_expires_at <= now())
                                                                                  AS zombies,
    count(*) FILTER (WHERE p.needs_lookup AND p.review_reason IS NULL)            AS awaiting_lookup,
    count(*)                                                                      AS pending_total,
    min(p.created_at)                                                             AS oldest_pending_at,
    (SELECT count(*) FROM symphony.payment_outbox_attempts a WHERE a.state = 'DISPATCHED')
                                                                                  AS dispatched_total,
    (SELECT count(*) FROM symphony.payment_outbox_attempts a WHERE a.state = 'FAILED')
                                                                                  AS failed_total,
    now()                                                                         AS observed_at,
    count(*) FILTER (WHERE p.review_reason IS NOT NULL)                           AS under_review
FROM symphony.payment_outbox_pending p;

REVOKE ALL ON symphony.outbox_supervisor_status FROM PUBLIC;
GRANT SELECT ON symphony.outbox_supervisor_status TO symphony_auditor;
GRANT SELECT ON symphony.outbox_supervisor_status TO symphony_control;
GRANT SELECT ON symphony.outbox_supervisor_status TO symphony_executor;
GRANT SELECT ON symphony.outbox_supervisor_status TO symphony_readonly;
