-- symphony.check_attempt_sequence: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0010_distribution_keys.sql.

-- The transition check (I4, I5) and the pending/terminal check (I7) read the item's rows by
-- (outbox_id, participant_id): the same index entries as before (outbox_id leads), and on a
-- sharded cluster the shard of the row being written, never a search of every shard.
-- Changed from 0003 only in the participant_id conditions.
CREATE OR REPLACE FUNCTION symphony.check_attempt_sequence() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_prev_no    integer;
    v_prev_state attempt_state;
BEGIN
    SELECT a.attempt_no, a.state
      INTO v_prev_no, v_prev_state
      FROM payment_outbox_attempts a
     WHERE a.outbox_id = NEW.outbox_id
       AND a.participant_id = NEW.participant_id
     ORDER BY a.attempt_no DESC
     LIMIT 1;

    IF NEW.attempt_no IS DISTINCT FROM coalesce(v_prev_no, 0) + 1 THEN
        RAISE EXCEPTION 'attempt_no must continue the item''s history without gaps'
            USING ERRCODE = 'SY301', CONSTRAINT = 'payment_outbox_attempts_attempt_no_dense',
                  DETAIL = format('expected %s, got %s', coalesce(v_prev_no, 0) + 1,
                                  NEW.attempt_no);
    END IF;

    IF NOT is_legal_transition(v_prev_state, NEW.state) THEN
        RAISE EXCEPTION 'illegal ledger transition'
            USING ERRCODE = 'SY300', CONSTRAINT = 'payment_outbox_attempts_legal_transition',
                  DETAIL = format('%s -> %s', coalesce(v_prev_state::text, '(start)'),
                                  NEW.state);
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION symphony.check_attempt_sequence()
    FROM PUBLIC;
