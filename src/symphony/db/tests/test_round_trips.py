"""The pipelined one-statement transaction and the skipped reset check: two round trips per
`Database.fetch_*`/`execute`, the role still checked before anything commits, and the
connection back in its pool idle and roleless on every way out (commit, rollback, error,
cancellation)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import psycopg
import pytest

from symphony.db import (
    Database,
    DatabaseSettings,
    Principal,
    Role,
    RoleError,
    SymphonyError,
    test_only,
)
from symphony.db import database as database_module


@pytest.fixture
async def one_conn_db(db_settings: DatabaseSettings) -> AsyncIterator[Database]:
    """A Database whose pools hold exactly one connection, so reuse is certain."""
    settings = db_settings.model_copy(update={"pool_min_size": 1, "pool_max_size": 1})
    database = await Database.open(settings)
    yield database
    await database.close()


def _enqueue(instruction_id: str, **changes: str) -> dict[str, str]:
    return {"instruction_id": instruction_id, "idempotency_key": "k",
            "participant_id": "p-tx", "rail_type": "ACH",
            "payload": json.dumps({"amount": "1.00", "currency": "EUR", "destination": "d"}),
            **changes}


async def _assert_idle_and_roleless(db: Database, principal: Principal,
                                    same_pid: int | None) -> None:
    ident = await test_only.pooled_identity(db, principal)
    if same_pid is not None:
        assert ident.backend_pid == same_pid, "the pool should have reused the connection"
    assert ident.idle_on_checkout
    assert ident.current_user == principal.value
    assert ident.session_user == principal.value


async def test_commit_skips_the_reset_check_and_leaves_the_connection_clean(
    one_conn_db: Database,
) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.INGEST)
    await test_only.settle_pool(one_conn_db, Principal.INGEST)
    checks = test_only.reset_checks_run()
    row = await one_conn_db.fetch_one(Role.INGEST, "enqueue_payment_outbox",
                                      _enqueue("rt-commit-1"))
    assert row is not None and row["created"]
    await test_only.settle_pool(one_conn_db, Principal.INGEST)
    # The one-statement transaction ended itself: no RESET ROLE round trip.
    assert test_only.reset_checks_run() == checks
    await _assert_idle_and_roleless(one_conn_db, Principal.INGEST, before.backend_pid)


async def test_transaction_block_commit_skips_the_reset_check(one_conn_db: Database) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.EXECUTOR)
    await test_only.settle_pool(one_conn_db, Principal.EXECUTOR)
    checks = test_only.reset_checks_run()
    async with one_conn_db.transaction(Role.EXECUTOR) as tx:
        await tx.fetch_one("count_zombies")
    await test_only.settle_pool(one_conn_db, Principal.EXECUTOR)
    assert test_only.reset_checks_run() == checks
    await _assert_idle_and_roleless(one_conn_db, Principal.EXECUTOR, before.backend_pid)


async def test_rollback_leaves_the_connection_clean(one_conn_db: Database) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.EXECUTOR)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with one_conn_db.transaction(Role.EXECUTOR) as tx:
            await tx.fetch_one("count_zombies")
            raise Abort
    await _assert_idle_and_roleless(one_conn_db, Principal.EXECUTOR, before.backend_pid)


async def test_failed_statement_in_the_pipeline_rolls_back_and_leaves_it_clean(
    one_conn_db: Database, admin_dsn: str,
) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.INGEST)
    with pytest.raises(SymphonyError) as info:
        await one_conn_db.fetch_one(Role.INGEST, "enqueue_payment_outbox",
                                    _enqueue("rt-error-1", rail_type="NOPE"))
    assert info.value.sqlstate == "SY014"
    await _assert_idle_and_roleless(one_conn_db, Principal.INGEST, before.backend_pid)
    # The statement's error is reported as the statement's, and the next call works.
    assert info.value.context is not None and "enqueue_payment_outbox" in info.value.context
    row = await one_conn_db.fetch_one(Role.INGEST, "enqueue_payment_outbox",
                                      _enqueue("rt-error-2"))
    assert row is not None and row["created"]


async def test_undecodable_parameter_leaves_the_connection_clean(one_conn_db: Database) -> None:
    before = await test_only.pooled_identity(one_conn_db, Principal.INGEST)
    with pytest.raises(SymphonyError):
        await one_conn_db.fetch_one(Role.INGEST, "enqueue_payment_outbox",
                                    _enqueue("rt-bad-\udc80"))
    await _assert_idle_and_roleless(one_conn_db, Principal.INGEST, before.backend_pid)


async def test_cancelled_call_leaves_no_role_and_nothing_committed(
    one_conn_db: Database, admin_dsn: str,
) -> None:
    """Cancelled while its statement waits on a lock (the enqueue's advisory lock, held here
    by the admin): the pool closes or resets the connection; nothing is committed and the
    connection the pool hands out next is idle and roleless."""
    key = "p-tx" + chr(31) + "rt-cancel-1" + chr(31) + "k"
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
        await admin.execute("SELECT pg_advisory_lock(hashtextextended(%s, 7301))", (key,))
        call = asyncio.create_task(one_conn_db.fetch_one(
            Role.INGEST, "enqueue_payment_outbox", _enqueue("rt-cancel-1")))
        for _ in range(200):  # until the enqueue waits on the lock
            cur = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                "   AND query LIKE '%%enqueue_payment_outbox%%'")
            row = await cur.fetchone()
            if row and row[0]:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the enqueue never waited on the lock")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await admin.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 7301))", (key,))
    await _assert_idle_and_roleless(one_conn_db, Principal.INGEST, None)
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT count(*) AS n FROM symphony.payment_instruction_registry"
                   " WHERE instruction_id = 'rt-cancel-1'")
    assert rows[0]["n"] == 0


async def test_raw_connection_use_gets_the_reset_check(one_conn_db: Database) -> None:
    """What ran on the raw connection is unknown to this module: the pool checks it."""
    pid = (await test_only.pooled_identity(one_conn_db, Principal.READER)).backend_pid
    await test_only.settle_pool(one_conn_db, Principal.READER)
    checks = test_only.reset_checks_run()
    await test_only.execute_as_role(one_conn_db, Role.AUDITOR, "SELECT 1 AS one")
    await test_only.settle_pool(one_conn_db, Principal.READER)
    assert test_only.reset_checks_run() == checks + 1
    await _assert_idle_and_roleless(one_conn_db, Principal.READER, pid)


async def test_a_role_check_that_fails_commits_nothing(
    one_conn_db: Database, admin_dsn: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pipelined statement runs before the check's answer is read; a wrong answer rolls it
    back (simulated: the check asks for a value that is not the role)."""
    monkeypatch.setattr(database_module, "_CURRENT_USER", "SELECT 'someone_else' AS role")
    with pytest.raises(RoleError) as info:
        await one_conn_db.fetch_one(Role.INGEST, "enqueue_payment_outbox",
                                    _enqueue("rt-mismatch-1"))
    assert info.value.code == "ROLE_MISMATCH"
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT count(*) AS n FROM symphony.payment_instruction_registry"
                   " WHERE instruction_id = 'rt-mismatch-1'")
    assert rows[0]["n"] == 0
    monkeypatch.undo()
    await _assert_idle_and_roleless(one_conn_db, Principal.INGEST, None)


async def test_nested_one_statement_call_is_refused(db: Database) -> None:
    async with db.transaction(Role.READONLY):
        with pytest.raises(RoleError) as info:
            await db.fetch_one(Role.READONLY, "supervisor_status")
    assert info.value.code == "NESTED_TRANSACTION"
