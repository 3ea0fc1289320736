"""`symphony worker` stops gracefully on SIGTERM.

No new claims after the signal; dispatches in flight finish within the grace period and are
recorded; what is still in flight when the grace period ends is left leased, for the zombie
repair — never completed by a worker that did not see it finish.
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
from tests.support.database import admin_dsn_of
from tests.support.outbox import instruction

from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import OutboxStore
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer

pytestmark = pytest.mark.integration

IN_FLIGHT = 6


async def _wait_for(condition: Any, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _start_worker(
    settings: DatabaseSettings, home: Path, rail_url: str, grace: float
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DATABASE_URL": admin_dsn_of(settings),
        "SYMPHONY_HOME": str(home),
        "SYMPHONY_ENV": "production",
        "SYMPHONY_SHUTDOWN_GRACE_SECONDS": str(grace),
        "SYMPHONY_LOG_LEVEL": "INFO",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symphony", "worker", "--rail-url", rail_url,
        "--worker-id", "terminated-worker", "--batch-size", str(IN_FLIGHT),
        # Room for more than the first batch: after the signal it could claim, and must not.
        "--concurrency", str(2 * IN_FLIGHT), "--dispatch-timeout", "30",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )


async def _wait_for_log(process: asyncio.subprocess.Process, fragment: str) -> None:
    """Read the worker's log until it says `fragment` (it has acted on the signal)."""
    assert process.stderr is not None
    while True:
        line = await asyncio.wait_for(process.stderr.readline(), 30)
        assert line, f"the worker's log ended before {fragment!r}"
        if fragment in line.decode(errors="replace"):
            return


async def _states(admin: str) -> dict[str, list[str]]:
    rows = await test_only.query_no_role(
        admin,
        "SELECT outbox_id::text AS id, array_agg(state::text ORDER BY attempt_no) AS states "
        "  FROM symphony.payment_outbox_attempts GROUP BY outbox_id")
    return {r["id"]: r["states"] for r in rows}


@pytest.mark.parametrize(
    ("latency_ms", "grace", "finishes"),
    [(1500, 20.0, True), (30000, 1.0, False)],
    ids=["in-flight-calls-finish", "grace-runs-out"],
)
async def test_sigterm_stops_claiming_and_drains_within_the_grace_period(
    make_database: Any, symphony_home: Path, latency_ms: int, grace: float, finishes: bool
) -> None:
    settings: DatabaseSettings = make_database()
    admin = admin_dsn_of(settings)
    sim = RailSimServer(RailSimConfig(port=0, behaviour=RailSimBehaviour(latency_ms=latency_ms)))
    await sim.start()
    db = await Database.open(settings)
    store = OutboxStore(db)
    process: asyncio.subprocess.Process | None = None
    try:
        first = {str((await store.enqueue(instruction())).outbox_id) for _ in range(IN_FLIGHT)}
        process = await _start_worker(settings, symphony_home, sim.url, grace)
        client = httpx.AsyncClient(base_url=sim.url)

        async def all_in_flight() -> bool:
            assert process is not None and process.returncode is None, "worker exited early"
            return int((await client.get("/v1/stats")).json()["in_flight"]) == IN_FLIGHT

        await _wait_for(all_in_flight, "the first batch to be in flight at the rail")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        await _wait_for_log(process, "received SIGTERM: stopping")
        # Work that arrives after the signal is not claimed by the stopping worker, although
        # it has free slots and is told about the work.
        later = {str((await store.enqueue(instruction())).outbox_id) for _ in range(3)}
        assert process.stderr is not None
        await asyncio.wait_for(process.stderr.read(), grace + 30)  # drain to the end
        code = await asyncio.wait_for(process.wait(), 30)
        took = time.monotonic() - started
        await client.aclose()

        assert code == 0
        states = await _states(admin)
        assert later.isdisjoint(states), "no claim after SIGTERM"
        if finishes:
            assert {states[i][-1] for i in first} == {"DISPATCHED"}
        else:
            assert took < grace + 15, "the worker must not wait for calls past the grace"
            assert {tuple(states[i]) for i in first} == {("DISPATCHING",)}
            leased = await test_only.query_no_role(
                admin, "SELECT count(*) AS n FROM symphony.payment_outbox_pending "
                       " WHERE claimed_by = 'terminated-worker' AND lease_token IS NOT NULL")
            assert leased == [{"n": IN_FLIGHT}], "unfinished items stay leased for the repair"
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await db.close()
        await sim.stop()
