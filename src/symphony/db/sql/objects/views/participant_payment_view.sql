-- symphony.participant_payment_view: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0023_cancellation.sql.

-- Changed from 0010 only in the terminal states: a canceled payment shows CANCELED, its time
-- as terminal_at and its code (CANCELED_BY_PARTICIPANT, CANCELED_BY_OPERATOR).
CREATE OR REPLACE VIEW symphony.participant_payment_view AS
SELECT r.participant_id,
       r.sequence_id,
       r.outbox_id,
       r.instruction_id,
       r.idempotency_key,
       r.rail_type,
       r.payload,
       CASE
           WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.state::text
           WHEN p.lease_token IS NOT NULL THEN 'DISPATCHING'
           WHEN l.state = 'RETRYABLE' THEN 'RETRYABLE'
           ELSE 'PENDING'
       END AS state,
       coalesce(p.attempt_count,
                (SELECT count(*) FROM symphony.payment_outbox_attempts d
                  WHERE d.outbox_id = r.outbox_id AND d.participant_id = r.participant_id
                    AND d.state = 'DISPATCHING'))::integer
           AS attempt_count,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN NULL ELSE p.next_attempt_at END
           AS next_attempt_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.error_code
            ELSE p.last_error_code END AS last_error_code,
       r.created_at,
       coalesce(l.recorded_at, r.created_at) AS updated_at,
       CASE WHEN l.state IN ('DISPATCHED', 'FAILED', 'CANCELED') THEN l.recorded_at END AS terminal_at
  FROM symphony.payment_instruction_registry r
  LEFT JOIN LATERAL (
      SELECT q.lease_token, q.attempt_count, q.next_attempt_at, q.last_error_code
        FROM symphony.payment_outbox_pending q
       WHERE q.outbox_id = r.outbox_id AND q.participant_id = r.participant_id
       LIMIT 1
  ) p ON true
  LEFT JOIN LATERAL (
      SELECT a.state, a.error_code, a.recorded_at
        FROM symphony.payment_outbox_attempts a
       WHERE a.outbox_id = r.outbox_id AND a.participant_id = r.participant_id
       ORDER BY a.attempt_no DESC
       LIMIT 1
  ) l ON true;

REVOKE ALL ON symphony.participant_payment_view FROM PUBLIC;
