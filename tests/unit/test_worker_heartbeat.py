"""The worker's heartbeat: a running WorkerProcess is in the fleet with its bucket range,
version and in-flight count; a clean stop takes it out; the heartbeat is one row per
interval, not one per item (the executor's claim and dispatch never touch it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.support.database import unique

from symphony import __version__
from symphony.db import Database, test_only
from symphony.outbox import OutboxStore
from symphony.outbox.model import BucketRange
from symphony.outbox.operators import OperatorStore
from symphony.rails import DispatchResult, LookupResult
from symphony.services.worker import WorkerConfig
from symphony.services.worker.executor import ExecutorWorker
from symphony.services.worker.heartbeat import HeartbeatService
from symphony.services.worker.runner import WorkerProcess


class IdleRail:
    """A rail nobody calls here (the queue of these tests' buckets is empty)."""

    supports_lookup = False

    async def dispatch(self, reference: str, **_: Any) -> DispatchResult:
        raise AssertionError("no dispatch expected")

    async def lookup(self, reference: str, **_: Any) -> LookupResult:
        raise AssertionError("no lookup expected")

    async def aclose(self) -> None:
        return None


def _config(**overrides: Any) -> WorkerConfig:
    values: dict[str, Any] = {"worker_id": unique("hb"), "lease_seconds": 60,
                              "heartbeat_seconds": 0.5, "poll_interval_seconds": 0.2}
    values.update(overrides)
    return WorkerConfig(**values)


async def _row(admin_dsn: str, worker_id: str) -> dict[str, Any] | None:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT * FROM symphony_ops.worker_heartbeats WHERE worker_id = %s",
        (worker_id,))
    return rows[0] if rows else None


async def test_a_running_worker_is_in_the_fleet_until_it_stops(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    config = _config(buckets=BucketRange(10, 20))
    process = WorkerProcess(isolated_db, config, rail=IdleRail())  # type: ignore[arg-type]
    await process.start()
    try:
        row = None
        for _ in range(100):
            row = await _row(isolated_admin_dsn, config.worker_id)
            if row is not None:
                break
            await asyncio.sleep(0.05)
        assert row is not None
        assert (row["bucket_from"], row["bucket_to"], row["version"]) == (10, 20, __version__)
        assert row["in_flight"] == 0 and row["stale_after_seconds"] == 15
        fleet = await OperatorStore(isolated_db).fleet()
        assert config.worker_id in {w.worker_id for w in fleet.live}
    finally:
        await process.stop()
    assert await _row(isolated_admin_dsn, config.worker_id) is None


async def test_one_heartbeat_is_one_upsert_that_reports_the_last_cycle(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    config = _config()
    executor = ExecutorWorker(OutboxStore(isolated_db), IdleRail(), config)  # type: ignore[arg-type]
    service = HeartbeatService(OperatorStore(isolated_db), config, executor)
    first = await service.run_once()
    assert (await _row(isolated_admin_dsn, config.worker_id))["last_cycle_at"] is None  # type: ignore[index]
    await executor.run_once()
    assert executor.last_cycle_at is not None
    second = await service.run_once()
    row = await _row(isolated_admin_dsn, config.worker_id)
    assert row is not None and row["heartbeat_at"] == second > first
    assert row["last_cycle_at"] == executor.last_cycle_at
    rows = await test_only.query_no_role(
        isolated_admin_dsn,
        "SELECT count(*) AS n FROM symphony_ops.worker_heartbeats WHERE worker_id = %s",
        (config.worker_id,))
    assert rows == [{"n": 1}]


@pytest.mark.parametrize("seconds", [0.1, 601])
def test_the_heartbeat_interval_is_bounded(seconds: float) -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        _config(heartbeat_seconds=seconds)
