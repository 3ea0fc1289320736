"""The worker's heartbeat: who it is, which buckets it serves, and that it is alive.

One small upsert (`record_worker_heartbeat`, as the executor) every `heartbeat_seconds`, in
its own loop beside the executor: never on the claim/dispatch path, never per item. A clean
stop removes the row at once; a crash leaves it to go stale, which the fleet view shows, with
any routing bucket that no live worker covers.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from symphony import __version__
from symphony.db import SymphonyError
from symphony.outbox.model import BUCKET_COUNT, BucketRange
from symphony.outbox.operators import Heartbeat, OperatorStore
from symphony.service import LoopService
from symphony.services.worker.config import WorkerConfig
from symphony.services.worker.executor import ExecutorWorker

ALL_BUCKETS = BucketRange(0, BUCKET_COUNT - 1)


class HeartbeatService(LoopService[datetime]):
    """Records the executor's heartbeat every `config.heartbeat_seconds`."""

    name = "heartbeat"

    def __init__(
        self, ops: OperatorStore, config: WorkerConfig, executor: ExecutorWorker
    ) -> None:
        super().__init__(config.heartbeat_seconds)
        self.ops = ops
        self.config = config
        self.executor = executor
        self.started_at = datetime.now(UTC)

    def beat(self) -> Heartbeat:
        return Heartbeat(
            worker_id=self.config.worker_id,
            buckets=self.config.buckets or ALL_BUCKETS,
            version=__version__,
            started_at=self.started_at,
            last_cycle_at=self.executor.last_cycle_at,
            in_flight=self.executor.items_in_flight,
            stale_after_seconds=self.config.heartbeat_stale_after_seconds,
        )

    async def run_once(self) -> datetime:
        return await self.ops.heartbeat(self.beat())

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the base signature
        """Stop beating and leave the fleet (best effort: a database that is down leaves the
        row to go stale, which is what a reader should see then)."""
        was_running = self.running
        await super().stop(timeout)
        if was_running:
            with contextlib.suppress(SymphonyError):
                await self.ops.end_heartbeat(self.config.worker_id)
