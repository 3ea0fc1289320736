-- symphony.complete_outbox_attempt: the running definition, applied again whenever this file
-- changes (a repeatable object: see sql/objects/README.md). Moved here from its last definition
-- in migration 0004_outbox_functions.sql.

CREATE OR REPLACE FUNCTION symphony.complete_outbox_attempt(
    p_outbox_id           uuid,
    p_lease_token         uuid,
    p_outcome             text,
    p_error_code          text DEFAULT NULL,
    p_error_detail        text DEFAULT NULL,
    p_ambiguous           boolean DEFAULT false,
    p_rail_transaction_id text DEFAULT NULL
) RETURNS TABLE (
    outbox_id       uuid,
    state           text,
    attempt_no      integer,
    next_attempt_at timestamptz
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_row record;
BEGIN
    SELECT * INTO v_row
      FROM complete_outbox_batch(
          ARRAY[p_outbox_id], ARRAY[p_lease_token], ARRAY[p_outcome], ARRAY[p_error_code],
          ARRAY[p_error_detail], ARRAY[coalesce(p_ambiguous, false)],
          ARRAY[p_rail_transaction_id]) AS c;
    -- I9: a stale or foreign token writes nothing and says so with its own SQLSTATE.
    IF v_row.result = 'FENCED' THEN
        RAISE EXCEPTION 'the lease on this outbox item is no longer held by the caller'
            USING ERRCODE = 'SY200', CONSTRAINT = 'payment_outbox_pending_lease_fence';
    END IF;
    RETURN QUERY SELECT v_row.outbox_id, v_row.state, v_row.attempt_no, v_row.next_attempt_at;
END
$$;

REVOKE ALL ON FUNCTION symphony.complete_outbox_attempt(uuid, uuid, text, text, text, boolean, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.complete_outbox_attempt(uuid, uuid, text, text, text, boolean, text)
    TO symphony_executor;
