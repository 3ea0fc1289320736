"""Scheduled ledger checkpoints: `CheckpointService` takes one every N minutes through the
control role, so the routine audit (`symphony audit verify --since-checkpoint`) reads only
what was written since the latest one. `symphony run` and `symphony worker` run it when their
database handle can become the control role (embedded or admin mode)."""

from __future__ import annotations

from symphony.services.checkpoint.service import (
    DEFAULT_CHECKPOINT_INTERVAL_MINUTES,
    CheckpointService,
)

__all__ = ["DEFAULT_CHECKPOINT_INTERVAL_MINUTES", "CheckpointService"]
