-- 0027 — a ledger checkpoint waits for every writer its snapshot cannot see.
--
-- Why: take_ledger_checkpoint (0019) reads its boundary, up_to = max(attempt_id), and the
-- snapshot it was read in, then waits for the ledger writers that snapshot listed as in
-- progress (pg_snapshot_xip): a row numbered at or below up_to may still belong to one of
-- them. But a snapshot lists only the transactions below its xmax, which is one past the
-- newest transaction id that has *ended*; a transaction with a higher id is treated as in
-- progress without being listed. So:
--     A takes its transaction id (any first write);
--     W takes a higher id, numbers its ledger row r (W stays open);
--     A numbers its ledger row m > r and commits;
--     the checkpoint's snapshot: xmax = A + 1, W not listed, up_to = m;
-- the checkpoint did not wait for W, its scans missed r, and when W committed, r appeared
-- at or below a checkpoint's up_to: the checkpoint's row_count is one short and the audit's
-- T3 (checkpoint_heads) reports ROW_INSERTED. Nothing is lost or changed in the ledger
-- itself, but the checkpoint no longer covers exactly what it says, and a correct ledger
-- fails its audit. This is the failure test_audit_realistic showed once under load;
-- tests/unit/test_checkpoint_concurrency.py
-- ::test_a_checkpoint_waits_for_a_writer_above_its_snapshots_xmax forces that order with
-- three sessions and failed on 0019.
--
-- How: the writers to wait for come from the lock table, as 0019 filtered them already (the
-- holders of a transaction id that also hold a lock on the ledger), keeping every one whose
-- id the snapshot cannot see: listed in progress, or at or above its xmax
-- (pg_visible_in_snapshot). A writer that started after the snapshot is waited for too
-- (its rows are numbered above up_to, so the wait is only spent time); a checkpoint is
-- taken by one session at a time and nobody waits for it, so that is fine.
--
-- Also: a writer is over when a fresh snapshot no longer counts it as running
-- (pg_visible_in_snapshot(id, pg_current_snapshot())), not when pg_xact_status says
-- 'committed'. A COMMIT marks the commit log first and leaves the list of running
-- transactions after (after its wait for a synchronous standby, if any); in between its
-- rows are invisible to a new snapshot. Today's minor releases make pg_xact_status look at
-- the running list first, older ones read the commit log alone and said 'committed' there;
-- a snapshot is the question the scans below depend on, on any minor release.
-- (test_a_checkpoint_waits_for_a_writer_committed_but_not_yet_visible holds a writer in that
-- window with a synchronous standby that never connects.)
--
-- Unchanged from 0019: the result row and digests, one checkpoint at a time, READ
-- COMMITTED (SY050), the heads of the items that moved, no lock on the ledger, the
-- statement trigger that gives every ledger writer its id before it numbers a row.
-- Functions used exist since PostgreSQL 13 (pg_current_snapshot, pg_visible_in_snapshot,
-- pg_snapshot_xmax).
--
-- Replaced: symphony.take_ledger_checkpoint() (newest definition: 0019; CREATE OR REPLACE
-- keeps its owner and grants).

SET LOCAL ROLE symphony_owner;

CREATE OR REPLACE FUNCTION symphony.take_ledger_checkpoint() RETURNS TABLE (
    checkpoint_id     bigint,
    taken_at          timestamptz,
    up_to_attempt_id  bigint,
    row_count         bigint,
    item_count        bigint,
    heads_digest      bytea,
    previous_digest   bytea,
    checkpoint_digest bytea,
    taken_by          text,
    changed_items     bigint
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_prev_id     bigint;
    v_prev_up_to  bigint;
    v_prev_digest bytea;
    v_id          bigint;
    v_at          timestamptz;
    v_up_to       bigint;
    v_snapshot    pg_snapshot;
    v_writers     xid8[];
    v_writer      xid8;
    v_pause       double precision;
    v_ref         bigint;
    v_over        boolean;
    v_rows        bigint;
    v_items       bigint;
    v_heads       bytea;
    v_digest      bytea;
    v_changed     bigint;
BEGIN
    -- Each statement below must see what committed before it (the wait is useless otherwise).
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a ledger checkpoint must be taken in a READ COMMITTED transaction'
            USING ERRCODE = 'SY050', CONSTRAINT = 'ledger_checkpoint_isolation';
    END IF;
    -- One checkpoint at a time, so each chains onto the one before; ledger writers never
    -- touch this table.
    LOCK TABLE ledger_checkpoints IN EXCLUSIVE MODE;

    SELECT c.checkpoint_id, c.up_to_attempt_id, c.checkpoint_digest
      INTO v_prev_id, v_prev_up_to, v_prev_digest
      FROM ledger_checkpoints c ORDER BY c.checkpoint_id DESC LIMIT 1;
    v_id := coalesce(v_prev_id, 0) + 1;

    -- The boundary and the snapshot it was read in, from one statement.
    SELECT coalesce(max(a.attempt_id), 0), pg_current_snapshot()
      INTO v_up_to, v_snapshot
      FROM payment_outbox_attempts a;
    v_up_to := greatest(v_up_to, coalesce(v_prev_up_to, 0));

    -- The ledger writers in flight that this snapshot cannot see: a row they numbered may lie
    -- at or below the boundary. Taken from the lock table (every ledger writer holds the lock
    -- on its own transaction id and ROW EXCLUSIVE on the ledger until it ends), not from the
    -- snapshot's in-progress list, which leaves out every id at or above its xmax (see the
    -- header). Ids are 32-bit there: each is widened to the xid8 nearest the snapshot's xmax
    -- (every running id lies within 2^31 of it).
    v_ref := pg_snapshot_xmax(v_snapshot)::text::bigint;
    v_writers := ARRAY(
        SELECT DISTINCT w.fxid
          FROM (SELECT (v_ref + ((t.transactionid::text::bigint - v_ref % 4294967296)
                                 % 4294967296 + 6442450944) % 4294967296 - 2147483648
                       )::text::xid8 AS fxid
                  FROM pg_locks t
                  JOIN pg_locks r ON r.virtualtransaction = t.virtualtransaction
                                 AND r.locktype = 'relation'
                                 AND r.database = (SELECT d.oid FROM pg_database d
                                                    WHERE d.datname = current_database())
                                 AND r.relation = 'symphony.payment_outbox_attempts'::regclass
                 WHERE t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock'
                   AND t.granted) w
         WHERE NOT pg_visible_in_snapshot(w.fxid, v_snapshot)
           AND w.fxid IS DISTINCT FROM pg_current_xact_id_if_assigned());
    -- Wait until each has ended, as a snapshot sees it: a fresh snapshot per check (READ
    -- COMMITTED), so the writer has left the running list and the scans below, which take
    -- later snapshots, see its rows. (pg_xact_status reads the commit log, which a COMMIT
    -- marks before the writer leaves that list.)
    FOREACH v_writer IN ARRAY v_writers LOOP
        v_pause := 0.001;
        LOOP
            SELECT pg_visible_in_snapshot(v_writer, pg_current_snapshot()) INTO v_over;
            EXIT WHEN v_over;
            PERFORM pg_sleep(v_pause);
            v_pause := least(v_pause * 2, 0.05);
        END LOOP;
    END LOOP;

    v_at := clock_timestamp();
    SELECT count(*) INTO v_rows FROM payment_outbox_attempts a WHERE a.attempt_id <= v_up_to;

    SELECT count(*),
           sha256(convert_to(coalesce(string_agg(
               h.outbox_id::text || ':' || h.attempt_no::text || ':'
                   || encode(h.row_digest, 'hex'),
               E'\n' ORDER BY h.outbox_id), ''), 'UTF8'))
      INTO v_items, v_heads
      FROM (SELECT DISTINCT ON (a.outbox_id) a.outbox_id, a.attempt_no, a.row_digest
              FROM payment_outbox_attempts a
             WHERE a.attempt_id <= v_up_to
             ORDER BY a.outbox_id, a.attempt_no DESC) h;

    v_digest := sha256(coalesce(v_prev_digest, ''::bytea) || convert_to(
        'symphony-checkpoint-v1'
        || '|' || digest_field(v_id::text)
        || '|' || digest_field(digest_micros(v_at))
        || '|' || digest_field(v_up_to::text)
        || '|' || digest_field(v_rows::text)
        || '|' || digest_field(v_items::text)
        || '|' || digest_field(encode(v_heads, 'hex'))
        || '|' || digest_field(session_user::text), 'UTF8'));

    INSERT INTO ledger_checkpoints
        (checkpoint_id, taken_at, up_to_attempt_id, row_count, item_count, heads_digest,
         previous_digest, checkpoint_digest, taken_by)
    VALUES (v_id, v_at, v_up_to, v_rows, v_items, v_heads, v_prev_digest, v_digest,
            session_user);

    -- The heads of the items that moved since the previous checkpoint.
    INSERT INTO ledger_checkpoint_heads (checkpoint_id, outbox_id, attempt_no, row_digest)
    SELECT v_id, h.outbox_id, h.attempt_no, h.row_digest
      FROM (SELECT DISTINCT ON (a.outbox_id) a.outbox_id, a.attempt_no, a.row_digest
              FROM payment_outbox_attempts a
             WHERE a.attempt_id <= v_up_to
               AND a.outbox_id IN (SELECT m.outbox_id FROM payment_outbox_attempts m
                                    WHERE m.attempt_id > coalesce(v_prev_up_to, 0)
                                      AND m.attempt_id <= v_up_to)
             ORDER BY a.outbox_id, a.attempt_no DESC) h;
    GET DIAGNOSTICS v_changed = ROW_COUNT;

    RETURN QUERY SELECT v_id, v_at, v_up_to, v_rows, v_items, v_heads, v_prev_digest, v_digest,
                        session_user::text, v_changed;
END
$$;

RESET ROLE;
