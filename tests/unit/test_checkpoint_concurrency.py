"""Ledger checkpoints do not block ledger inserts (issue 14, item 4b).

Failed on main: take_ledger_checkpoint() held a SHARE lock on the ledger for its whole run, so
every claim and completion waited for it (about 6 s at 1M rows), and past the lock timeout
they failed. Each test holds a checkpoint mid-run deterministically (no timing): either in its
wait for the ledger writers in flight when it started (a session that claimed and stays open),
or at its last insert, after its scans (a session locking ledger_checkpoint_heads). Meanwhile
another session claims and completes items, with a short lock timeout so that a block fails
fast. Afterwards the checkpoint covers exactly what it says, the next one covers what was
written meanwhile, and the whole audit passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest
from tests.support.database import admin_dsn_of, unique
from tests.support.outbox import instruction

from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import AuditStore, Checkpoint, Completion, OutboxStore, Outcome, verify

# Ledger inserts that are blocked fail after this long instead of hanging the test.
_LOCK_TIMEOUT_MS = 1000


@pytest.fixture
async def writer_db(isolated_settings: DatabaseSettings) -> AsyncIterator[Database]:
    db = await Database.open(isolated_settings.model_copy(
        update={"lock_timeout_ms": _LOCK_TIMEOUT_MS}))
    # Other tests' leftovers are parked a day ahead: each claim here takes its own item.
    await test_only.query_no_role(
        admin_dsn_of(isolated_settings),
        "UPDATE symphony.payment_outbox_pending SET next_attempt_at = now() + interval '1 day'"
        " WHERE lease_token IS NULL")
    try:
        yield db
    finally:
        await db.close()


async def _enqueue(store: OutboxStore) -> UUID:
    return (await store.enqueue(instruction())).outbox_id


async def _dispatch(store: OutboxStore) -> UUID:
    """Enqueue, claim and complete one item: three ledger writes, each its own statement."""
    outbox_id = await _enqueue(store)
    [item] = await store.claim(unique("w"), 1, 60)
    assert item.outbox_id == outbox_id
    done = await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                           rail_transaction_id=f"rtx-{outbox_id.hex[:8]}"))
    assert done.state == "DISPATCHED"
    return outbox_id


async def _attempt_ids(admin_dsn: str, outbox_id: UUID) -> list[int]:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT attempt_id FROM symphony.payment_outbox_attempts "
                   " WHERE outbox_id = %s ORDER BY attempt_no", (outbox_id,))
    return [int(r["attempt_id"]) for r in rows]


async def _checkpoint_waits(admin_dsn: str, wait_type: str) -> bool:
    rows = await test_only.query_no_role(
        admin_dsn,
        "SELECT count(*) AS n FROM pg_stat_activity "
        " WHERE query LIKE '%%take_ledger_checkpoint%%' AND pid <> pg_backend_pid() "
        "   AND state = 'active' AND wait_event_type = %s", (wait_type,))
    return int(rows[0]["n"]) == 1


async def _eventually(check: Callable[[], Awaitable[bool]], task: asyncio.Task[Any]) -> None:
    async with asyncio.timeout(30):
        while not await check():
            assert not task.done(), "the checkpoint ended before it was held"
            await asyncio.sleep(0.02)


async def test_inserts_go_on_while_a_checkpoint_waits_for_a_writer_in_flight(
    writer_db: Database, isolated_admin_dsn: str,
) -> None:
    store = OutboxStore(writer_db)
    audit = AuditStore(writer_db)
    await audit.checkpoint()  # the previous checkpoint the next one chains onto
    held = await _enqueue(store)
    holder = await psycopg.AsyncConnection.connect(isolated_admin_dsn)
    async with holder:
        # A ledger writer in flight: it numbered its DISPATCHING row and has not committed.
        await holder.execute("SELECT * FROM symphony.claim_outbox_batch('holder', 1, 60)")
        # A row numbered after it, committed: the boundary a checkpoint reads lies above the
        # writer's row, so the checkpoint must wait for the writer before it may cover it.
        before = await _dispatch(store)
        checkpoint = asyncio.create_task(audit.checkpoint())
        try:
            await _eventually(lambda: _checkpoint_waits(isolated_admin_dsn, "Timeout"),
                              checkpoint)
            # Held in its wait: other sessions claim and complete as usual.
            during = [await _dispatch(store) for _ in range(3)]
            assert not checkpoint.done()
            await holder.commit()
            first: Checkpoint = await checkpoint
        finally:
            if not checkpoint.done():
                checkpoint.cancel()

    [held_row] = await _attempt_ids(isolated_admin_dsn, held)
    assert held_row < max(await _attempt_ids(isolated_admin_dsn, before)) <= \
        first.up_to_attempt_id
    written_during = [await _attempt_ids(isolated_admin_dsn, i) for i in during]
    assert all(min(ids) > first.up_to_attempt_id for ids in written_during), \
        "written during the checkpoint: left to the next one"
    second = await audit.checkpoint()
    assert all(max(ids) <= second.up_to_attempt_id for ids in written_during)
    report = await verify(writer_db)
    assert report.ok, [c.as_dict() for c in report.failed()]


async def test_no_lock_on_the_ledger_is_held_across_the_checkpoints_scans(
    writer_db: Database, isolated_admin_dsn: str,
) -> None:
    store = OutboxStore(writer_db)
    audit = AuditStore(writer_db)
    await _dispatch(store)
    holder = await psycopg.AsyncConnection.connect(isolated_admin_dsn)
    async with holder:
        # The checkpoint scans the ledger, then waits here, at its last insert.
        await holder.execute("LOCK TABLE symphony.ledger_checkpoint_heads IN SHARE MODE")
        checkpoint = asyncio.create_task(audit.checkpoint())
        try:
            await _eventually(lambda: _checkpoint_waits(isolated_admin_dsn, "Lock"), checkpoint)
            locks = await test_only.query_no_role(
                isolated_admin_dsn,
                "SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                " WHERE a.query LIKE '%%take_ledger_checkpoint%%' "
                "   AND a.pid <> pg_backend_pid() AND l.granted "
                "   AND l.relation = 'symphony.payment_outbox_attempts'::regclass")
            assert {r["mode"] for r in locks} <= {"AccessShareLock"}
            during = [await _dispatch(store) for _ in range(3)]
            assert not checkpoint.done()
            await holder.commit()
            first = await checkpoint
        finally:
            if not checkpoint.done():
                checkpoint.cancel()

    written_during = [await _attempt_ids(isolated_admin_dsn, i) for i in during]
    assert all(min(ids) > first.up_to_attempt_id for ids in written_during)
    second = await audit.checkpoint()
    assert second.row_count > first.row_count
    report = await verify(writer_db)
    assert report.ok, [c.as_dict() for c in report.failed()]


async def test_the_ledgers_numbers_are_handed_out_one_at_a_time(isolated_admin_dsn: str) -> None:
    # The checkpoint's boundary relies on it: a cached range of attempt_ids per session would
    # let a row numbered below the boundary appear after the writers it waited for.
    rows = await test_only.query_no_role(
        isolated_admin_dsn,
        "SELECT s.seqcache FROM pg_sequence s "
        " WHERE s.seqrelid = pg_get_serial_sequence('symphony.payment_outbox_attempts', "
        "                                           'attempt_id')::regclass")
    assert rows == [{"seqcache": 1}]


async def test_every_ledger_insert_statement_takes_its_transaction_id_first(
    isolated_admin_dsn: str,
) -> None:
    rows = await test_only.query_no_role(
        isolated_admin_dsn,
        "SELECT t.tgenabled, t.tgtype, p.proname, p.prosecdef FROM pg_trigger t "
        "  JOIN pg_proc p ON p.oid = t.tgfoid "
        " WHERE t.tgrelid = 'symphony.payment_outbox_attempts'::regclass "
        "   AND t.tgname = 'payment_outbox_attempts_00_writer_xid'")
    assert len(rows) == 1
    [row] = rows
    # Enabled ALWAYS; BEFORE (2) INSERT (4), for each statement (bit 1 clear).
    assert (row["tgenabled"], row["tgtype"], row["proname"], row["prosecdef"]) == (
        "A", 2 | 4, "ledger_writer_xid", True)
