-- A DISPATCHED ledger row must carry the rail's transaction id, whoever writes it.
--
-- Why: DISPATCHED ends an item for good (I6: no second send, ever), and the transaction id is
-- the only evidence an operator can reconcile with the rail. Before this migration a lookup
-- answered 200 {"status": "EXECUTED"} (no reference, no id: a generic or cached page) was
-- recorded DISPATCHED "confirmed by lookup" with rail_transaction_id NULL, so a payment the
-- rail may never have made was closed. The rail client now refuses such answers; this
-- constraint makes the rule the database's, for every writer: the completion functions
-- (batch and single, the lookup path is a completion), resolve_outbox_review, and the owner.
--
-- * payment_outbox_attempts_dispatched_transaction_id: a DISPATCHED row has a
--   rail_transaction_id of 1-200 characters, not only whitespace, without control
--   characters (C0, DEL, C1). The rail client is stricter (printable, no format or
--   unassigned code points, no padding): anything it accepts is stored unchanged here.
--   A CHECK, not a trigger: it costs one expression per inserted row, holds for every
--   writer, and is reported as SQLSTATE 23514 with this name, which symphony.db translates
--   to DISPATCHED_WITHOUT_TRANSACTION_ID. Other states are not constrained.
-- * Existing rows. The ledger is append-only and chained (0009): a DISPATCHED row written
--   without an id before this migration can be neither corrected nor removed. The constraint
--   is therefore added NOT VALID (it holds for every row written from now on, and adding it
--   scans nothing), then validated in a sub-block: on a database without such rows (every
--   new one, and most upgrades) it ends VALID; where they exist the validation is rolled
--   back, the constraint stays NOT VALID, and a WARNING gives their number. Those items were
--   closed on no evidence: reconcile them with the rail (the README, "What proves a payment
--   executed", lists them). pg_dump restores a NOT VALID check after the data, so such a
--   database still dumps and restores.

SET LOCAL ROLE symphony_owner;

ALTER TABLE symphony.payment_outbox_attempts
    ADD CONSTRAINT payment_outbox_attempts_dispatched_transaction_id CHECK (
        state <> 'DISPATCHED'
        OR (rail_transaction_id IS NOT NULL
            AND char_length(rail_transaction_id) BETWEEN 1 AND 200
            AND rail_transaction_id ~ '[^[:space:]]'
            AND rail_transaction_id !~ '[\x01-\x1f\x7f-\x9f]')
    ) NOT VALID;

DO $validate$
DECLARE
    v_closed_without_proof bigint;
BEGIN
    BEGIN
        ALTER TABLE symphony.payment_outbox_attempts
            VALIDATE CONSTRAINT payment_outbox_attempts_dispatched_transaction_id;
    EXCEPTION WHEN check_violation THEN
        SELECT count(*) INTO v_closed_without_proof
          FROM symphony.payment_outbox_attempts a
         WHERE a.state = 'DISPATCHED'
           AND NOT (a.rail_transaction_id IS NOT NULL
                    AND char_length(a.rail_transaction_id) BETWEEN 1 AND 200
                    AND a.rail_transaction_id ~ '[^[:space:]]'
                    AND a.rail_transaction_id !~ '[\x01-\x1f\x7f-\x9f]');
        RAISE WARNING 'the ledger holds % DISPATCHED row(s) written without a usable rail '
                      'transaction id before this migration; they stay as they are (the '
                      'ledger is append-only) and the new constraint stays NOT VALID: '
                      'reconcile those items with the rail', v_closed_without_proof;
    END;
END
$validate$;

RESET ROLE;
