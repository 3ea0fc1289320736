"""Fault injection: `symphony worker` SIGKILLed at every point of its cycle, over and over.

A few hundred payments; worker processes started one after another (two lanes at once), each
stopped dead at one chosen point of its cycle (tests/support/fault_worker.py: before the claim
commits, after it, during a rail call, after the rail answered but before the completion
commits) and SIGKILLed there. After each kill the dead worker's leases are moved past the
zombie threshold in the database (no waiting) and the next worker's repair loop requeues them
for a lookup. The rail simulator adds latency and some retryable and terminal refusals.

At the end a healthy worker drains the queue, and every item is terminal exactly once (or held
in review, visible, never silently closed), every DISPATCHED item was executed by the rail
exactly once, no FAILED item was executed at all, and the invariants hold.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.database import DatabaseFactory, admin_dsn_of
from tests.support.fault_worker import POINTS
from tests.support.invariants import check_invariants
from tests.support.outbox import instruction

from symphony.db import Database, test_only
from symphony.outbox import OutboxStore
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer

pytestmark = pytest.mark.integration

ITEMS = 300
KILLS = 52  # 13 per point
LANES = 2
THRESHOLD = 60
REPO = Path(__file__).resolve().parents[2]


def _env(admin_dsn: str, home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": admin_dsn,
        "SYMPHONY_HOME": str(home),
        "SYMPHONY_ENV": "production",
        "ZOMBIE_THRESHOLD_SECONDS": str(THRESHOLD),
        "SYMPHONY_LOG_LEVEL": "ERROR",
        "PYTHONPATH": str(REPO),
        **extra,
    }


async def _worker(env: dict[str, str], rail_url: str, worker_id: str
                  ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.fault_worker", "worker", "--rail-url", rail_url,
        "--worker-id", worker_id, "--batch-size", "5", "--concurrency", "5",
        "--dispatch-timeout", "5", "--lookup-timeout", "2",
        env=env, cwd=str(REPO), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await asyncio.wait_for(process.wait(), 30)


async def _expire_leases_of(admin_dsn: str, worker_id: str) -> None:
    """The dead worker's leases age past the threshold — in the database, not in a sleep."""
    await test_only.query_no_role(
        admin_dsn,
        "UPDATE symphony.payment_outbox_pending "
        "   SET claimed_at = now() - make_interval(secs => %(age)s), "
        "       lease_expires_at = now() - interval '1 second' "
        " WHERE claimed_by = %(worker)s",
        {"age": THRESHOLD + 1, "worker": worker_id})


async def test_sigkill_at_every_point_of_the_cycle_loses_and_doubles_nothing(
    make_database: DatabaseFactory, symphony_home: Path
) -> None:
    settings = make_database()
    admin = admin_dsn_of(settings)
    # No backoff, no settle time, a high ceiling: the run is about crashes, not about waiting.
    await test_only.query_no_role(
        admin, "UPDATE symphony.outbox_retry_policy SET max_attempts = 60, backoff_base_ms = 0,"
               " backoff_max_ms = 0, ambiguous_settle_ms = 0")
    sim = RailSimServer(RailSimConfig(port=0, behaviour=RailSimBehaviour(
        latency_ms=50, retryable_failure_rate=0.1, terminal_failure_rate=0.05, seed=9)))
    await sim.start()
    db = await Database.open(settings)
    store = OutboxStore(db)
    rng = random.Random(20261201)
    kills: Counter[str] = Counter()
    enqueued = 0
    started = time.monotonic()
    survivor: asyncio.subprocess.Process | None = None
    try:
        async def enqueue(n: int) -> None:
            nonlocal enqueued
            for _ in range(n):
                await store.enqueue(instruction())
            enqueued += n

        await enqueue(ITEMS)
        plan = [POINTS[i % len(POINTS)] for i in range(KILLS)]
        rng.shuffle(plan)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for point in plan:
            queue.put_nowait(point)
        misses = 0

        async def lane(lane_no: int) -> None:
            nonlocal misses
            n = 0
            while not queue.empty():
                point = queue.get_nowait()
                n += 1
                worker_id = f"chaos-{lane_no}-{n}"
                [left] = await test_only.query_no_role(
                    admin, "SELECT count(*) AS n FROM symphony.payment_outbox_pending")
                if left["n"] < 30:
                    await enqueue(30)  # keep work in the queue for every kill
                env = _env(admin, symphony_home, SYMPHONY_FAULT_POINT=point,
                           SYMPHONY_FAULT_HIT=str(rng.randint(1, 3)))
                process = await _worker(env, sim.url, worker_id)
                try:
                    assert process.stdout is not None
                    line = await asyncio.wait_for(process.stdout.readline(), 20)
                finally:
                    await _kill(process)
                assert process.returncode == -signal.SIGKILL
                if line.decode().strip() == f"FAULT {point}":
                    kills[point] += 1
                else:
                    misses += 1
                    queue.put_nowait(point)  # the point was not reached: try it again
                    assert misses < 20, "fault points are not being reached"
                await _expire_leases_of(admin, worker_id)

        await asyncio.gather(*(lane(i) for i in range(LANES)))
        assert sum(kills.values()) >= 50 and set(kills) == set(POINTS), kills

        # A healthy worker (no fault point) repairs the last zombies and drains the queue.
        survivor = await _worker(_env(admin, symphony_home), sim.url, "survivor")
        deadline = time.monotonic() + 90
        while True:
            [row] = await test_only.query_no_role(
                admin, "SELECT count(*) FILTER (WHERE review_reason IS NULL) AS open, "
                       "       count(*) FILTER (WHERE review_reason IS NOT NULL) AS review "
                       "  FROM symphony.payment_outbox_pending")
            if row["open"] == 0:
                break
            assert time.monotonic() < deadline, f"queue not drained: {row}"
            assert survivor.returncode is None, "the healthy worker exited"
            await asyncio.sleep(0.25)
        survivor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(survivor.wait(), 30) == 0

        async with httpx.AsyncClient(base_url=sim.url) as client:
            stats: dict[str, Any] = (await client.get("/v1/stats")).json()
        outcome = await _outcome(admin)
        assert outcome["items"] == enqueued
        # Exactly once: one terminal row each, or held open in review; nothing else pending.
        assert outcome["terminal_rows_max"] <= 1
        assert outcome["terminal"] + outcome["review"] == enqueued, outcome
        dispatched = set(outcome["dispatched"])
        failed = set(outcome["failed"])
        executions: dict[str, int] = stats["executions"]
        assert stats["max_executions_per_reference"] == 1
        assert dispatched <= set(executions), "a DISPATCHED item the rail never executed"
        assert not failed & set(executions), "a FAILED item the rail executed"
        under_review_executed = set(executions) - dispatched
        assert under_review_executed <= set(outcome["review_ids"]), (
            "an executed payment neither DISPATCHED nor held in review")
        report = await check_invariants(db, admin)
        print(f"\nsigkill: {sum(kills.values())} kills {dict(kills)}, {misses} misses, "
              f"{enqueued} items, {len(dispatched)} dispatched, {len(failed)} failed, "
              f"{outcome['review']} in review, {outcome['zombies']} zombie requeues, "
              f"{stats['total_calls']} rail calls, {stats['total_executions']} executions, "
              f"{stats['total_replays']} replays, ledger {report.ledger_rows} rows, "
              f"{time.monotonic() - started:.1f}s")
    finally:
        if survivor is not None and survivor.returncode is None:
            await _kill(survivor)
        await db.close()
        await sim.stop()


async def _outcome(admin: str) -> dict[str, Any]:
    [row] = await test_only.query_no_role(admin, """
        SELECT (SELECT count(*) FROM symphony.payment_instruction_registry) AS items,
               (SELECT count(DISTINCT outbox_id) FROM symphony.payment_outbox_attempts
                 WHERE state IN ('DISPATCHED', 'FAILED')) AS terminal,
               (SELECT coalesce(max(n), 0) FROM (
                   SELECT count(*) AS n FROM symphony.payment_outbox_attempts
                    WHERE state IN ('DISPATCHED', 'FAILED') GROUP BY outbox_id) x)
                   AS terminal_rows_max,
               (SELECT count(*) FROM symphony.payment_outbox_pending
                 WHERE review_reason IS NOT NULL) AS review,
               (SELECT coalesce(array_agg(outbox_id::text), '{}')
                  FROM symphony.payment_outbox_pending WHERE review_reason IS NOT NULL)
                   AS review_ids,
               (SELECT coalesce(array_agg(outbox_id::text), '{}')
                  FROM symphony.payment_outbox_attempts WHERE state = 'DISPATCHED')
                   AS dispatched,
               (SELECT coalesce(array_agg(outbox_id::text), '{}')
                  FROM symphony.payment_outbox_attempts WHERE state = 'FAILED') AS failed,
               (SELECT count(*) FROM symphony.payment_outbox_attempts
                 WHERE state = 'ZOMBIE_REQUEUE') AS zombies
    """)
    return row
