-- symphony.revoke_participant: the running definition, applied again whenever this file changes
-- (a repeatable object: see sql/objects/README.md). Moved here from its last definition in
-- migration 0007_participants_and_tokens.sql.

CREATE OR REPLACE FUNCTION symphony.revoke_participant(
    p_participant_id text
) RETURNS SETOF symphony.participants
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
DECLARE
    v_row participants%ROWTYPE;
BEGIN
    -- The row lock waits for enqueues in flight (they hold FOR SHARE) and makes later ones
    -- wait for this transaction, then see REVOKED.
    SELECT * INTO v_row FROM participants pt
     WHERE pt.participant_id = p_participant_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no participant with this id'
            USING ERRCODE = 'SY034', CONSTRAINT = 'revoke_participant_known';
    END IF;
    IF v_row.status = 'ACTIVE' THEN
        UPDATE participants pt SET status = 'REVOKED', revoked_at = now()
         WHERE pt.participant_id = p_participant_id
        RETURNING * INTO v_row;
    END IF;
    -- Also when the participant was revoked before: no token of it may stay live.
    UPDATE api_tokens t SET revoked_at = now()
     WHERE t.participant_id = p_participant_id AND t.revoked_at IS NULL;
    RETURN NEXT v_row;
END
$$;

REVOKE ALL ON FUNCTION symphony.revoke_participant(text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION symphony.revoke_participant(text)
    TO symphony_control;
