"""A worker killed with SIGKILL in the middle of dispatching loses nothing and pays nothing twice.

The `symphony worker` process claims items and sends them to a simulator that executes each
payment and then hangs (the worst case: the money moved, the answer never came). The process is
killed with SIGKILL while those calls are in flight. Its leases are then moved past the zombie
threshold in the database (no waiting), one repair cycle returns every item to PENDING, and a
fresh worker finishes them: it asks the rail first, sees they were executed, and records
DISPATCHED without sending again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.database import make_due
from tests.support.outbox import instruction

from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import OutboxStore
from symphony.rails import HttpRailClient
from symphony.repair import ZombieRepairConfig, ZombieRepairWorker
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer
from symphony.services.worker import ExecutorWorker, WorkerConfig

pytestmark = pytest.mark.integration

ITEMS = 12
THRESHOLD = 60


async def _wait_for(condition: Any, what: str, limit: float = 60.0) -> None:
    """Poll a condition with a deadline (the subprocess runs on its own clock)."""
    deadline = time.monotonic() + limit
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_sigkill_mid_dispatch_is_repaired_without_double_execution(
    isolated_settings: DatabaseSettings, isolated_admin_dsn: str, symphony_home: Path
) -> None:
    sim = RailSimServer(RailSimConfig(port=0, behaviour=RailSimBehaviour(
        hang_rate=1.0, hang_seconds=600.0, hang_mode="after_execute")))
    await sim.start()
    db = await Database.open(isolated_settings)
    store = OutboxStore(db)
    process: asyncio.subprocess.Process | None = None
    try:
        ids = {str((await store.enqueue(instruction())).outbox_id) for _ in range(ITEMS)}
        env = {
            **os.environ,
            "DATABASE_URL": isolated_admin_dsn,
            "SYMPHONY_HOME": str(symphony_home),
            "SYMPHONY_ENV": "production",
            "ZOMBIE_THRESHOLD_SECONDS": str(THRESHOLD),
            "SYMPHONY_LOG_LEVEL": "WARNING",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "symphony", "worker", "--rail-url", sim.url,
            "--worker-id", "doomed-worker", "--batch-size", "50", "--concurrency", "50",
            "--dispatch-timeout", "20",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        client = httpx.AsyncClient(base_url=sim.url)

        async def all_executed_and_hanging() -> bool:
            assert process is not None and process.returncode is None, "worker exited early"
            stats = (await client.get("/v1/stats")).json()
            return set(stats["executions"]) == ids and stats["in_flight"] == ITEMS

        await _wait_for(all_executed_and_hanging, "every item to be executed and in flight")
        process.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(process.wait(), 30) == -signal.SIGKILL

        leased = await test_only.query_no_role(
            isolated_admin_dsn,
            "SELECT outbox_id::text AS id, claimed_by FROM symphony.payment_outbox_pending")
        assert {r["id"] for r in leased} == ids
        assert {r["claimed_by"] for r in leased} == {"doomed-worker"}

        # The dead worker's leases age past the threshold — set in the database, not waited for.
        await test_only.query_no_role(
            isolated_admin_dsn,
            "UPDATE symphony.payment_outbox_pending "
            "   SET claimed_at = now() - make_interval(secs => %(age)s), "
            "       lease_expires_at = now() - interval '1 second'",
            {"age": THRESHOLD + 1},
        )
        repair = ZombieRepairWorker(store, ZombieRepairConfig(threshold_seconds=THRESHOLD))
        repaired = await repair.run_once()
        assert {str(r.outbox_id) for r in repaired.repaired} == ids
        # Their lookups wait the settle time after the repair: let it pass in the database.
        await make_due(isolated_admin_dsn, *ids)

        # The rail stops hanging; a healthy worker finishes the items.
        await client.put("/v1/behaviour", json={})
        rail = HttpRailClient(sim.url)
        survivor = ExecutorWorker(store, rail, WorkerConfig(
            worker_id="survivor", batch_size=50, lease_seconds=THRESHOLD,
            dispatch_timeout_seconds=5.0,
        ))
        result = await survivor.run_once()
        await rail.aclose()
        assert result.claimed == ITEMS
        assert result.looked_up == ITEMS
        assert result.skipped_send == ITEMS, "each executed payment must be settled by lookup"
        assert result.dispatched == ITEMS

        stats = (await client.get("/v1/stats")).json()
        await client.aclose()
        assert stats["executions"] == {ref: 1 for ref in ids}
        assert stats["max_executions_per_reference"] == 1

        ledger = await test_only.query_no_role(
            isolated_admin_dsn,
            "SELECT outbox_id::text AS id, array_agg(state::text ORDER BY attempt_no) AS states "
            "  FROM symphony.payment_outbox_attempts GROUP BY outbox_id")
        assert {r["id"] for r in ledger} == ids
        for row in ledger:
            assert row["states"] == ["DISPATCHING", "ZOMBIE_REQUEUE", "DISPATCHING", "DISPATCHED"]
        assert await test_only.query_no_role(
            isolated_admin_dsn, "SELECT count(*) AS n FROM symphony.payment_outbox_pending"
        ) == [{"n": 0}]
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 30)
        await db.close()
        await sim.stop()
