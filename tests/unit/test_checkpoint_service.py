"""Scheduled checkpoints: the loop takes one per interval through the control role (none at
start), the worker runs it only where its handle may become the control role, and the
interval is validated."""

from __future__ import annotations

import pytest

from symphony.db import ConfigurationError, Database, DatabaseSettings, Principal
from symphony.outbox import AuditStore
from symphony.services.checkpoint import DEFAULT_CHECKPOINT_INTERVAL_MINUTES, CheckpointService
from symphony.services.worker import WorkerConfig, WorkerProcess


async def test_the_loop_takes_a_checkpoint_per_interval_but_none_at_start(
    isolated_db: Database,
) -> None:
    before = len(await AuditStore(isolated_db).checkpoints())
    service = CheckpointService(isolated_db, interval_minutes=1)
    assert service.interval == 60
    assert await service.run_once() is None  # the cycle at start
    taken = await service.run_once()
    assert taken is not None
    after = await AuditStore(isolated_db).checkpoints()
    assert [c.checkpoint_id for c in after][-1] == taken.checkpoint_id
    assert len(after) == before + 1


async def test_a_handle_that_cannot_become_control_is_refused(
    db_settings: DatabaseSettings,
) -> None:
    executor_only = await Database.open(db_settings, principals=(Principal.EXECUTOR,))
    try:
        with pytest.raises(ValueError, match="control role"):
            CheckpointService(executor_only, interval_minutes=1)
        # The worker on such a handle simply takes none.
        worker = WorkerProcess(executor_only, WorkerConfig.load())
        assert worker.checkpoints is None
    finally:
        await executor_only.close()


async def test_the_worker_schedules_checkpoints_where_it_can(db: Database) -> None:
    worker = WorkerProcess(db, WorkerConfig.load())
    assert worker.checkpoints is not None
    assert worker.checkpoints.interval == DEFAULT_CHECKPOINT_INTERVAL_MINUTES * 60
    off = WorkerProcess(db, WorkerConfig.load(checkpoint_interval_minutes=0))
    assert off.checkpoints is None
    await worker.rail.aclose()
    await off.rail.aclose()


def test_the_interval_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMPHONY_CHECKPOINT_INTERVAL_MINUTES", "-1")
    with pytest.raises(ConfigurationError):
        WorkerConfig.load()
    monkeypatch.setenv("SYMPHONY_CHECKPOINT_INTERVAL_MINUTES", "15")
    assert WorkerConfig.load().checkpoint_interval_minutes == 15
