"""A loop that takes a ledger checkpoint every `interval_minutes` (the control role).

The first checkpoint is taken one interval after the start, not at the start: a restart loop
never turns into a checkpoint loop. A failed checkpoint is logged and tried again at the next
interval (LoopService); nothing else depends on it.
"""

from __future__ import annotations

from typing import Final

from symphony.db import Database, Role
from symphony.outbox import AuditStore, Checkpoint
from symphony.service import LoopService

DEFAULT_CHECKPOINT_INTERVAL_MINUTES: Final = 60.0


class CheckpointService(LoopService[Checkpoint | None]):
    """Takes a checkpoint per interval; `run_once` takes one now."""

    name = "checkpoint"

    def __init__(self, db: Database, interval_minutes: float) -> None:
        super().__init__(interval_minutes * 60.0)
        if Role.CONTROL not in db.roles:
            raise ValueError("checkpoints are taken as the control role, which this database "
                             "handle cannot become")
        self.store = AuditStore(db)
        self._started_cycle = True

    async def run_once(self) -> Checkpoint | None:
        """Take a checkpoint (the loop's first cycle, right at start, takes none)."""
        if self._started_cycle:
            self._started_cycle = False
            return None
        checkpoint = await self.store.checkpoint()
        self.log.info("checkpoint %d: %d ledger rows of %d items", checkpoint.checkpoint_id,
                      checkpoint.row_count, checkpoint.item_count)
        return checkpoint

    async def start(self) -> None:
        self._started_cycle = True
        await super().start()
