"""The zombie repair worker: returns items whose lease expired to PENDING.

A worker that dies mid-dispatch leaves its items DISPATCHING with a lease nobody will
complete. The executor leases items for `ZOMBIE_THRESHOLD_SECONDS`; once such a lease has
expired (and, for this worker, was taken at least its own threshold ago, so a repair process
started with a longer threshold only waits longer and one with a shorter threshold never takes
a live lease), `repair_expired_leases` appends a `ZOMBIE_REQUEUE` row for each and makes it due
again under the same `outbox_id`, flagged so that the next dispatcher asks the rail whether
the dead worker's call went through (I10). A second cycle finds nothing to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from symphony.db import ConfigurationError, Role
from symphony.outbox import BucketRange, OutboxStore, RepairedItem
from symphony.service import LoopService

DEFAULT_ZOMBIE_THRESHOLD_SECONDS = 120
MAX_ZOMBIE_THRESHOLD_SECONDS = 86_400


def zombie_threshold_from_env(environ: dict[str, str] | None = None) -> int:
    """`ZOMBIE_THRESHOLD_SECONDS` (default 120); zero, negative or non-numeric is an error."""
    env = os.environ if environ is None else environ
    raw = env.get("ZOMBIE_THRESHOLD_SECONDS")
    if raw is None or raw.strip() == "":
        return DEFAULT_ZOMBIE_THRESHOLD_SECONDS
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigurationError(
            f"ZOMBIE_THRESHOLD_SECONDS must be a whole number of seconds, got {raw!r}",
            code="INVALID_ZOMBIE_THRESHOLD",
        ) from None
    if not 1 <= value <= MAX_ZOMBIE_THRESHOLD_SECONDS:
        raise ConfigurationError(
            f"ZOMBIE_THRESHOLD_SECONDS must be between 1 and {MAX_ZOMBIE_THRESHOLD_SECONDS}, "
            f"got {value}",
            code="INVALID_ZOMBIE_THRESHOLD",
        )
    return value


@dataclass(frozen=True, slots=True)
class ZombieRepairConfig:
    """Settings of the repair loop.

    threshold_seconds: age of a lease after which its item is a zombie (and the lease length
        the executor claims with). Default: `ZOMBIE_THRESHOLD_SECONDS`, else 120.
    interval_seconds: pause between cycles (default 5).
    batch_size: most items repaired in one cycle, so one cycle is one bounded statement
        (default 500).
    role: the role that runs the repair (executor by default; control for a manual repair).
    buckets: repair only this bucket range (a worker of a fleet repairs its own buckets);
        default None, every bucket.
    """

    threshold_seconds: int = field(default_factory=zombie_threshold_from_env)
    interval_seconds: float = 5.0
    batch_size: int = 500
    role: Role = Role.EXECUTOR
    buckets: BucketRange | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.threshold_seconds <= MAX_ZOMBIE_THRESHOLD_SECONDS:
            raise ConfigurationError(
                f"zombie threshold must be between 1 and {MAX_ZOMBIE_THRESHOLD_SECONDS} seconds",
                code="INVALID_ZOMBIE_THRESHOLD",
            )
        if self.interval_seconds <= 0:
            raise ConfigurationError("repair interval must be positive",
                                     code="INVALID_REPAIR_INTERVAL")
        if not 1 <= self.batch_size <= 100_000:
            raise ConfigurationError("repair batch size must be between 1 and 100000",
                                     code="INVALID_REPAIR_BATCH")
        if self.role not in (Role.EXECUTOR, Role.CONTROL):
            raise ConfigurationError("repair runs as the executor or the control role",
                                     code="INVALID_REPAIR_ROLE")


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What one cycle repaired. `more_pending` is true when the batch was full."""

    repaired: list[RepairedItem]
    more_pending: bool

    @property
    def count(self) -> int:
        return len(self.repaired)


class ZombieRepairWorker(LoopService[RepairResult]):
    """Runs `repair_expired_leases` in bounded batches."""

    name = "zombie-repair"

    def __init__(self, store: OutboxStore, config: ZombieRepairConfig | None = None) -> None:
        # Built here, not at import: the threshold is read from the environment at construction.
        self.config = config or ZombieRepairConfig()
        super().__init__(self.config.interval_seconds)
        self.store = store
        self.total_repaired = 0

    async def run_once(self) -> RepairResult:
        repaired = await self.store.repair_expired_leases(
            self.config.batch_size,
            threshold_seconds=self.config.threshold_seconds,
            role=self.config.role,
            buckets=self.config.buckets,
        )
        self.total_repaired += len(repaired)
        if repaired:
            self.log.warning(
                "requeued %d zombie item(s) whose lease expired: %s",
                len(repaired), ", ".join(str(r.outbox_id) for r in repaired[:10]),
            )
        result = RepairResult(repaired, more_pending=len(repaired) == self.config.batch_size)
        if result.more_pending:
            self.wake()
        return result

    async def zombie_count(self) -> int:
        """Items whose lease expired and that await repair (for monitoring)."""
        return await self.store.count_zombies()
