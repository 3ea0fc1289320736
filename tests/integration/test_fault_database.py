"""Fault injection on the database side, with a real `symphony worker` process.

* read-only database (`default_transaction_read_only` on for new sessions, as a disk-full
  guard or a failover leaves it): every write is refused with DATABASE_READ_ONLY, by the API
  of symphony.db, by `symphony enqueue` and in the worker's loop; nothing is half-written;
  once switched off, the same worker and the same handles recover without a restart;
* a slow database: a lock held from an admin connection makes the worker's statements end
  with LOCK_TIMEOUT (lock_timeout first) or QUERY_TIMEOUT (statement_timeout first); the
  worker keeps cycling and finishes the work once the lock is gone;
* pool exhaustion: POOL_EXHAUSTED after the pool timeout, and the next call works once a
  connection is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from tests.support.database import DatabaseFactory, admin_dsn_of
from tests.support.invariants import check_invariants
from tests.support.outbox import instruction
from tests.support.processes import ServiceProcess, service_env, until

from symphony.db import (
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    QueryTimeoutError,
    Role,
    test_only,
)
from symphony.outbox import OutboxStore
from symphony.services.rail_sim import RailSimConfig, RailSimServer

pytestmark = pytest.mark.integration

THRESHOLD = 60
REPO = Path(__file__).resolve().parents[2]


def _env(admin_dsn: str, home: Path, **extra: str) -> dict[str, str]:
    return service_env(admin_dsn, home, THRESHOLD, **extra)


class WorkerProcess(ServiceProcess):
    @classmethod
    async def start_worker(cls, env: dict[str, str], rail_url: str) -> ServiceProcess:
        return await cls.worker(env, rail_url, "db-fault-worker")


_until = until


async def _counts(admin: str) -> dict[str, Any]:
    [row] = await test_only.query_no_role(admin, """
        SELECT (SELECT count(*) FROM symphony.payment_instruction_registry) AS items,
               (SELECT count(*) FROM symphony.payment_outbox_attempts) AS ledger_rows,
               (SELECT count(*) FROM symphony.payment_outbox_pending) AS pending,
               (SELECT count(*) FROM symphony.payment_outbox_pending
                 WHERE lease_token IS NOT NULL) AS leased,
               (SELECT count(*) FROM symphony.payment_outbox_attempts
                 WHERE state = 'DISPATCHED') AS dispatched""")
    return row


@pytest.fixture
async def fault_db(make_database: DatabaseFactory) -> AsyncIterator[tuple[DatabaseSettings, str]]:
    settings = make_database()
    yield settings, admin_dsn_of(settings)


@pytest.fixture
async def rail() -> AsyncIterator[RailSimServer]:
    sim = RailSimServer(RailSimConfig(port=0))
    await sim.start()
    yield sim
    await sim.stop()


def _dbname(admin: str) -> str:
    return str(conninfo_to_dict(admin)["dbname"])


async def _set_read_only(admin: str, on: bool) -> None:
    # ALTER DATABASE ... SET takes no parameters: the name is quoted by psycopg.sql.
    statement = ("ALTER DATABASE {} SET default_transaction_read_only = on" if on
                 else "ALTER DATABASE {} RESET default_transaction_read_only")
    # From the maintenance database: a session of the database itself is read-only too.
    maintenance = make_conninfo(admin, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as conn:
        await conn.execute(psycopg.sql.SQL(statement).format(
            psycopg.sql.Identifier(_dbname(admin))))


async def _enqueue_after_recovery(store: OutboxStore) -> Any:
    """Enqueue once the database takes writes again. A pooled session opened while it was
    read-only keeps that default: each such session is refused once, then discarded."""
    for _ in range(3):
        try:
            return await store.enqueue(instruction())
        except DatabaseUnavailableError as exc:
            assert exc.code == "DATABASE_READ_ONLY"
    raise AssertionError("the handle did not recover from read-only sessions")


async def test_read_only_database_refuses_writes_cleanly_and_recovers(
    fault_db: tuple[DatabaseSettings, str], rail: RailSimServer, symphony_home: Path
) -> None:
    settings, admin = fault_db
    worker: ServiceProcess | None = None
    await _set_read_only(admin, True)
    db = await Database.open(settings)
    store = OutboxStore(db)
    try:
        before = await _counts(admin)
        with pytest.raises(DatabaseUnavailableError) as refused:
            await store.enqueue(instruction())
        assert (refused.value.code, refused.value.sqlstate) == ("DATABASE_READ_ONLY", "25006")
        with pytest.raises(DatabaseUnavailableError) as refused:
            await store.claim("read-only-probe", 10, THRESHOLD)
        assert refused.value.code == "DATABASE_READ_ONLY"
        # Reads still work: status is served.
        assert (await store.status()).pending_total == 0

        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "symphony", "enqueue", "--instruction-id", "ro-1",
            "--idempotency-key", "ro-key-1", "--participant", "participant-cli",
            "--rail", "SEPA_CT", "--amount", "10.00", "--currency", "EUR",
            "--destination", "acct-ro", "--json",
            env=_env(admin, symphony_home), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await cli.communicate()
        assert cli.returncode == 1
        assert b"DATABASE_READ_ONLY" in out + err

        # Work arrives while writes are possible, then the database turns read-only again
        # under a running worker.
        await _set_read_only(admin, False)
        ids = [(await _enqueue_after_recovery(store)).outbox_id]
        ids += [(await store.enqueue(instruction())).outbox_id for _ in range(19)]
        await _set_read_only(admin, True)
        worker = await WorkerProcess.start_worker(_env(admin, symphony_home), rail.url)

        async def refused_in_the_loop() -> bool:
            assert worker is not None and worker.process.returncode is None
            return worker.count("DATABASE_READ_ONLY") >= 2

        await _until(refused_in_the_loop, "the worker's loop to be refused read-only")
        during = await _counts(admin)
        # Nothing half-done: no claim went through, no ledger row, nothing leased.
        assert during["items"] == before["items"] + 20 == 20
        assert during["ledger_rows"] == before["ledger_rows"] == 0
        assert during["leased"] == 0

        await _set_read_only(admin, False)

        async def all_dispatched() -> bool:
            assert worker is not None and worker.process.returncode is None, "worker exited"
            return (await _counts(admin))["dispatched"] == len(ids)

        await _until(all_dispatched, "the same worker to recover and dispatch everything")
        # The same in-process handle recovers too: its read-only sessions are discarded.
        await _enqueue_after_recovery(store)
        assert await worker.stop() == 0
        worker = None
        assert rail.simulator.stats()["max_executions_per_reference"] == 1
        await check_invariants(db, admin)
    finally:
        if worker is not None:
            await worker.stop()
        await _set_read_only(admin, False)
        await db.close()


@contextlib.asynccontextmanager
async def _table_locked(admin: str) -> AsyncIterator[None]:
    """An admin transaction holding the queue's table lock until the block ends."""
    async with (
        await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn,
        conn.transaction(),
    ):
        await conn.execute("LOCK TABLE symphony.payment_outbox_pending IN ACCESS EXCLUSIVE MODE")
        yield


@pytest.mark.parametrize(("timeouts", "code"), [
    ({"SYMPHONY_DB_LOCK_TIMEOUT_MS": "150", "SYMPHONY_DB_STATEMENT_TIMEOUT_MS": "5000"},
     "LOCK_TIMEOUT"),
    ({"SYMPHONY_DB_LOCK_TIMEOUT_MS": "5000", "SYMPHONY_DB_STATEMENT_TIMEOUT_MS": "200"},
     "QUERY_TIMEOUT"),
], ids=["lock-timeout", "statement-timeout"])
async def test_slow_database_gives_coded_timeouts_and_the_worker_recovers(
    fault_db: tuple[DatabaseSettings, str], rail: RailSimServer, symphony_home: Path,
    timeouts: dict[str, str], code: str,
) -> None:
    settings, admin = fault_db
    db = await Database.open(settings)
    store = OutboxStore(db)
    worker: ServiceProcess | None = None
    try:
        ids = [(await store.enqueue(instruction())).outbox_id for _ in range(20)]
        async with _table_locked(admin):
            worker = await WorkerProcess.start_worker(_env(admin, symphony_home, **timeouts), rail.url)

            async def timed_out_twice() -> bool:
                assert worker is not None and worker.process.returncode is None
                return worker.count(code) >= 2  # claim and repair, or two cycles

            await _until(timed_out_twice, f"{code} in the worker's log")
            # A direct call through symphony.db gets the same code, as a QueryTimeoutError.
            quick = DatabaseSettings(
                DATABASE_URL=admin, SYMPHONY_HOME=str(symphony_home),
                SYMPHONY_DB_LOCK_TIMEOUT_MS=timeouts["SYMPHONY_DB_LOCK_TIMEOUT_MS"],
                SYMPHONY_DB_STATEMENT_TIMEOUT_MS=timeouts["SYMPHONY_DB_STATEMENT_TIMEOUT_MS"])
            probe = await Database.open(quick)
            try:
                with pytest.raises(QueryTimeoutError) as slow:
                    await OutboxStore(probe).claim("probe", 1, THRESHOLD)
                assert slow.value.code == code
            finally:
                await probe.close()
            # Nothing half-done (the ledger is readable; the locked queue is not, to anyone).
            [ledger] = await test_only.query_no_role(
                admin, "SELECT count(*) AS n FROM symphony.payment_outbox_attempts")
            assert ledger["n"] == 0
        # The lock is gone: the same worker, never restarted, finishes everything.

        async def all_dispatched() -> bool:
            assert worker is not None and worker.process.returncode is None, "worker stuck/exited"
            return (await _counts(admin))["dispatched"] == len(ids)

        await _until(all_dispatched, "the worker to recover after the lock")
        assert await worker.stop() == 0
        worker = None
        await check_invariants(db, admin)
    finally:
        if worker is not None:
            await worker.stop()
        await db.close()


async def test_pool_exhaustion_is_a_coded_error_and_recovers(
    fault_db: tuple[DatabaseSettings, str], symphony_home: Path
) -> None:
    _, admin = fault_db
    small = DatabaseSettings(DATABASE_URL=admin, SYMPHONY_HOME=str(symphony_home),
                             SYMPHONY_DB_POOL_MAX_SIZE=1, SYMPHONY_DB_CONNECT_TIMEOUT_S=1)
    db = await Database.open(small)
    store = OutboxStore(db)
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold_the_only_connection() -> None:
            async with db.transaction(Role.INGEST, label="hold"):
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_only_connection())
        await held.wait()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as exhausted:
            await store.enqueue(instruction())
        assert exhausted.value.code == "POOL_EXHAUSTED"
        assert time.monotonic() - started < 5, "the wait is bounded by the pool timeout"
        release.set()
        await holder
        result = await store.enqueue(instruction())  # recovered, same handle
        assert result.created
        assert (await _counts(admin))["items"] == 1  # the refused one wrote nothing
    finally:
        await db.close()
