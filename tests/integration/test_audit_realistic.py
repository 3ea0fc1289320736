"""`audit verify` on a database after a realistic run: workers dispatch to the rail simulator,
which fails a share of calls retryably, refuses some for good and hangs on others past the
client's timeout (ambiguous outcomes, lookups); checkpoints are taken while the workers write.
Every check passes, on the whole database and incrementally, and the latest checkpoint
recomputes from the ledger (so a checkpoint taken mid-run covered exactly what it claims)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.support.outbox import instruction, payload, until_drained

from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import AuditStore, OutboxStore, verify
from symphony.rails import HttpRailClient
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer
from symphony.services.worker import ExecutorWorker, WorkerConfig

pytestmark = pytest.mark.integration

ITEMS = 120
WORKERS = 2


async def test_audit_passes_after_a_realistic_run(make_database: Any) -> None:
    settings: DatabaseSettings = make_database()
    assert settings.database_url is not None
    admin = settings.database_url.get_secret_value()
    await test_only.query_no_role(
        admin, "UPDATE symphony.outbox_retry_policy SET max_attempts = 100, "
               "backoff_base_ms = 20, backoff_max_ms = 200, ambiguous_settle_ms = 200")
    sim = RailSimServer(RailSimConfig(port=0, behaviour=RailSimBehaviour(
        retryable_failure_rate=0.2, hang_rate=0.05, hang_seconds=1.0, seed=20261201,
    )))
    await sim.start()
    setup_db = await Database.open(settings)
    dbs: list[Database] = []
    workers: list[ExecutorWorker] = []
    rails: list[HttpRailClient] = []
    checkpoints = 0
    try:
        store = OutboxStore(setup_db)
        audit = AuditStore(setup_db)
        for n in range(ITEMS):
            await store.enqueue(instruction(payload=payload(
                destination="FAIL:ACCOUNT_CLOSED" if n % 20 == 0 else f"acct-{n:04d}")))
        for n in range(WORKERS):
            db = await Database.open(settings)
            dbs.append(db)
            rail = HttpRailClient(sim.url)
            rails.append(rail)
            workers.append(ExecutorWorker(OutboxStore(db), rail, WorkerConfig(
                worker_id=f"audit-worker-{n}", batch_size=8, max_concurrency=8,
                dispatch_timeout_seconds=0.3, lookup_timeout_seconds=1.0,
                poll_interval_seconds=0.05, lease_seconds=60, shutdown_grace_seconds=2.0,
            )))
        for worker in workers:
            await worker.start()
        async def checkpoint() -> None:
            # Checkpoints while the workers write: each must cover exactly its rows.
            nonlocal checkpoints
            await audit.checkpoint()
            checkpoints += 1

        await until_drained(store, admin, each_round=checkpoint)
    finally:
        for worker in workers:
            await worker.stop()
        for rail in rails:
            await rail.aclose()
        for db in dbs:
            await db.close()
        await sim.stop()

    try:
        assert checkpoints >= 1
        await audit.checkpoint()
        report = await verify(setup_db)
        assert report.ok, [c.as_dict() for c in report.failed()]
        assert report.counts["items"] == ITEMS
        assert report.counts["pending"] == 0
        assert report.counts["checkpoints"] == checkpoints + 1
        assert all(not c.skipped for c in report.checks)
        # Some attempts were ambiguous (the hangs): the I10 check had something to look at.
        marks = await test_only.query_no_role(
            admin, "SELECT count(*) AS n FROM symphony.outbox_lookup_marks")
        assert marks[0]["n"] >= 1

        recent = await verify(setup_db, since=datetime.now(UTC) - timedelta(minutes=10))
        assert recent.ok and recent.counts["items"] == ITEMS
        assert recent.check("latest_checkpoint").skipped
        none = await verify(setup_db, since=datetime.now(UTC) + timedelta(minutes=10))
        assert none.ok and none.counts["items"] == 0
    finally:
        await setup_db.close()
