-- symphony.participant_attempt_view: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0016_payment_events.sql.

-- One ledger row as the participant sees it (no worker id, lease or login; a zombie requeue's
-- detail, which names the worker, replaced by a fixed text): the shape of
-- participant_payment_attempts since 0007, now a view both it and the events read.
CREATE OR REPLACE VIEW symphony.participant_attempt_view AS
SELECT a.participant_id,
       a.outbox_id,
       a.attempt_no,
       a.state::text AS state,
       a.error_code,
       CASE WHEN a.state = 'ZOMBIE_REQUEUE'
            THEN 'the dispatch did not report back in time; the payment was requeued'
            ELSE a.error_detail END AS error_detail,
       a.rail_transaction_id,
       a.recorded_at
  FROM symphony.payment_outbox_attempts a;

REVOKE ALL ON symphony.participant_attempt_view FROM PUBLIC;
