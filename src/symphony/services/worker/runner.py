"""A whole worker process: the executor loop, the zombie repair loop, the heartbeat and the
metrics endpoint.

`WorkerProcess` is what `symphony worker` runs and what `symphony run` embeds. It owns the rail
client it creates (and closes it), never the database handle it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from symphony.db import ConfigurationError, Database, Role
from symphony.outbox import OutboxStore
from symphony.outbox.operators import OperatorStore
from symphony.rails import HttpRailClient, RailClient
from symphony.repair import RepairResult, ZombieRepairConfig, ZombieRepairWorker
from symphony.services.checkpoint import CheckpointService
from symphony.services.worker.config import WorkerConfig
from symphony.services.worker.executor import CycleResult, ExecutorWorker
from symphony.services.worker.heartbeat import HeartbeatService
from symphony.services.worker.metric import WorkerMetrics

log = logging.getLogger("symphony.worker")


@dataclass(frozen=True, slots=True)
class OnceResult:
    """What `symphony worker --once` did: one repair cycle, then one executor cycle."""

    cycle: CycleResult
    repaired: int

    def as_dict(self) -> dict[str, Any]:
        return {**self.cycle.as_dict(), "zombies_repaired": self.repaired}


class WorkerProcess:
    """The executor worker and the zombie repair loop, started and stopped together."""

    def __init__(
        self,
        db: Database,
        config: WorkerConfig,
        *,
        rail: RailClient | None = None,
        repair_config: ZombieRepairConfig | None = None,
    ) -> None:
        self.config = config
        self.store = OutboxStore(db)
        self.metrics = WorkerMetrics()
        self._owns_rail = rail is None
        self.rail: RailClient = rail or HttpRailClient(
            config.rail_url, max_connections=config.max_concurrency
        )
        self.executor = ExecutorWorker(self.store, self.rail, config, metrics=self.metrics)
        # The repair uses the same threshold the executor leases with (both come from
        # ZOMBIE_THRESHOLD_SECONDS unless the caller says otherwise).
        self.repair: ZombieRepairWorker = _MeteredRepair(
            self.store,
            repair_config or ZombieRepairConfig(threshold_seconds=config.lease_seconds,
                                               buckets=config.buckets),
            self.metrics,
        )
        self.heartbeat = HeartbeatService(OperatorStore(db), config, self.executor)
        # Scheduled checkpoints, where this handle can become the control role.
        self.checkpoints: CheckpointService | None = None
        if config.checkpoint_interval_minutes > 0 and Role.CONTROL in db.roles:
            self.checkpoints = CheckpointService(db, config.checkpoint_interval_minutes)
        self._started = False

    async def start(self) -> None:
        """Start both loops (and the metrics endpoint, if configured). Repeats do nothing."""
        if self._started:
            return
        await self.check_lease()
        self._started = True
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.metrics_port)
        await self.repair.start()
        await self.executor.start()
        await self.heartbeat.start()
        if self.checkpoints is not None:
            await self.checkpoints.start()
        log.info(
            "worker %s started: rail %s, batch %d, concurrency %d, lease %ds, buckets %s",
            self.config.worker_id, self.config.rail_url, self.config.batch_size,
            self.config.max_concurrency, self.config.lease_seconds,
            self.config.buckets or "all",
            extra={"worker_id": self.config.worker_id},
        )

    async def stop(self) -> None:
        """Stop claiming, drain within the grace period, stop the repair, close the rail
        client. Repeats do nothing."""
        if not self._started:
            return
        self._started = False
        log.info("worker %s stopping (grace %.1fs)", self.config.worker_id,
                 self.config.shutdown_grace_seconds, extra={"worker_id": self.config.worker_id})
        try:
            if self.checkpoints is not None:
                await self.checkpoints.stop()
            await self.executor.stop()
            await self.repair.stop()
            await self.heartbeat.stop()
        finally:
            if self._owns_rail:
                await self.rail.aclose()
        log.info("worker %s stopped after %d cycle(s)", self.config.worker_id,
                 self.executor.cycles, extra={"worker_id": self.config.worker_id})

    async def run_once(self) -> OnceResult:
        """One repair cycle, then one executor cycle; for `--once` and scripts."""
        await self.check_lease()
        repaired = await self.repair.run_once()
        cycle = await self.executor.run_once()
        return OnceResult(cycle=cycle, repaired=repaired.count)

    async def check_lease(self) -> None:
        """Refuse to start with a lease longer than the database's zombie threshold: every
        claim would be refused, and the repair would disagree with this worker about when
        its items became zombies."""
        threshold = await self.store.zombie_threshold_seconds()
        if self.config.lease_seconds > threshold:
            raise ConfigurationError(
                f"the worker's lease ({self.config.lease_seconds}s, ZOMBIE_THRESHOLD_SECONDS) "
                f"is longer than the database's zombie threshold ({threshold}s): run "
                "`symphony migrate` with the same ZOMBIE_THRESHOLD_SECONDS",
                code="LEASE_EXCEEDS_THRESHOLD",
            )

    async def aclose(self) -> None:
        """Release what `run_once` used without `start` (the rail client)."""
        if self._owns_rail:
            await self.rail.aclose()

    async def run_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully."""
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await self.start()
            try:
                await stop.wait()
            finally:
                await self.stop()


class _MeteredRepair(ZombieRepairWorker):
    """The zombie repair, counting what it repairs into the worker's metrics."""

    def __init__(
        self, store: OutboxStore, config: ZombieRepairConfig, metrics: WorkerMetrics
    ) -> None:
        super().__init__(store, config)
        self._metrics = metrics

    async def run_once(self) -> RepairResult:
        result = await super().run_once()
        self._metrics.zombies_repaired.inc(result.count)
        return result


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set `stop` on SIGTERM or SIGINT while the block runs (main thread only)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not available off the main thread; then cancellation remains the way to stop.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _signalled, stop, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _signalled(stop: asyncio.Event, sig: signal.Signals) -> None:
    if not stop.is_set():
        log.info("received %s: stopping", sig.name)
    stop.set()
