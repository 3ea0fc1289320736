-- Ledger checkpoints that do not block ledger inserts.
--
-- Why: take_ledger_checkpoint (0009) held a SHARE lock on the ledger for its whole run (two
-- full scans: 566 ms at 100k rows, about 6 s at 1M), so every claim and completion waited that
-- long; past the statement timeout the completions failed and the worker left paid items
-- leased. The lock was only there to fix a boundary: once it was held, every row numbered up
-- to max(attempt_id) was committed, so the checkpoint covered exactly attempt_id <= up_to.
-- This migration fixes the same boundary without holding anything across the scans.
--
-- * attempt_id comes from the identity sequence when a row is formed, and transactions commit
--   in any order: a row numbered below the highest visible one may still be in flight. The
--   checkpoint reads max(attempt_id) and the snapshot it was read in (one statement), then
--   waits until every transaction that snapshot saw in progress has ended; after that no row
--   numbered up to that max can still appear, and the scans (plain reads: no lock on the
--   ledger) cover exactly attempt_id <= up_to_attempt_id, as before. A row committed while a
--   checkpoint runs is numbered above its up_to and covered by the next checkpoint.
-- * That wait is sound only if every transaction that numbers a ledger row had its
--   transaction id when the snapshot was taken. PostgreSQL gives a transaction its id at its
--   first write, which for a ledger insert may come after the row was numbered. The new
--   BEFORE INSERT ... FOR EACH STATEMENT trigger payment_outbox_attempts_00_writer_xid
--   assigns it first (statement triggers fire before the statement forms its rows), so a
--   writer that numbered a row is always in the snapshot's in-progress list, or done.
--   Enabled ALWAYS like the ledger's other triggers, and checked by the audit (I3). Its cost
--   is one trigger call per insert statement, not per row. The identity sequence must hand
--   out one number at a time (CACHE 1, as created in 0002; a test checks it): a session
--   holding a cached range could number a row below the boundary later.
-- * The checkpoint waits only for the in-progress transactions that hold a lock on the
--   ledger (every ledger writer does, from its first insert to its end: the inserts take
--   ROW EXCLUSIVE), polling pg_xact_status with a backoff of 1 to 50 ms: a long unrelated
--   transaction does not delay it. A writer that stays open (idle in transaction) delays only
--   the checkpoint, until its statement timeout; nobody waits for the checkpoint.
-- * Unchanged: one checkpoint at a time (EXCLUSIVE lock on ledger_checkpoints, which only
--   checkpoints take), READ COMMITTED required (SY050), the digests, the heads of the items
--   that moved, the result row.
--
-- Replaced: symphony.take_ledger_checkpoint() (defined in 0009 only; the same result type
-- and grants).

SET LOCAL ROLE symphony_owner;

CREATE FUNCTION symphony.ledger_writer_xid() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = symphony, pg_catalog, pg_temp
AS $$
BEGIN
    -- Assigns the transaction id now, before the statement numbers its rows (see above).
    PERFORM pg_current_xact_id();
    RETURN NULL;
END
$$;

-- "00": before every other trigger of the table (they fire in name order).
CREATE TRIGGER payment_outbox_attempts_00_writer_xid
    BEFORE INSERT ON symphony.payment_outbox_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION symphony.ledger_writer_xid();
ALTER TABLE symphony.payment_outbox_attempts
    ENABLE ALWAYS TRIGGER payment_outbox_attempts_00_writer_xid;

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

    -- The ledger writers that snapshot saw in progress: a row they numbered may lie at or
    -- below the boundary. Wait until each has committed or rolled back.
    v_writers := ARRAY(
        SELECT DISTINCT x.xid
          FROM pg_snapshot_xip(v_snapshot) AS x(xid)
          -- Its owner holds the lock on its own transaction id.
          JOIN pg_locks t ON t.locktype = 'transactionid' AND t.transactionid = x.xid::xid
                         AND t.mode = 'ExclusiveLock' AND t.granted
          JOIN pg_locks r ON r.virtualtransaction = t.virtualtransaction
                         AND r.locktype = 'relation'
                         AND r.database = (SELECT d.oid FROM pg_database d
                                            WHERE d.datname = current_database())
                         AND r.relation = 'symphony.payment_outbox_attempts'::regclass
         WHERE x.xid IS DISTINCT FROM pg_current_xact_id_if_assigned());
    FOREACH v_writer IN ARRAY v_writers LOOP
        v_pause := 0.001;
        WHILE pg_xact_status(v_writer) = 'in progress' LOOP
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

REVOKE ALL ON FUNCTION symphony.ledger_writer_xid() FROM PUBLIC;
