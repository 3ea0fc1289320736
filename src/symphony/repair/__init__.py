"""Repair of items whose dispatcher died: expired leases go back to PENDING."""

from __future__ import annotations

from symphony.repair.zombie_repair_worker import (
    RepairResult,
    ZombieRepairConfig,
    ZombieRepairWorker,
    zombie_threshold_from_env,
)

__all__ = ["RepairResult", "ZombieRepairConfig", "ZombieRepairWorker", "zombie_threshold_from_env"]
