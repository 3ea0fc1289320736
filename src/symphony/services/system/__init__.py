"""`symphony run`: the database, the rail simulator, the worker (with its repair loop, heartbeat
and checkpoints), the webhook delivery service and the HTTP API together in one process."""

from __future__ import annotations

from symphony.services.system.demo import DemoSnapshot, demo_destination, demo_instructions
from symphony.services.system.runner import RunOptions, SystemRunner, run_system

__all__ = [
    "DemoSnapshot",
    "RunOptions",
    "SystemRunner",
    "demo_destination",
    "demo_instructions",
    "run_system",
]
