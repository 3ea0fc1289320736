"""In-memory HTTP payment rail that deduplicates by reference and misbehaves on demand."""

from __future__ import annotations

from symphony.services.rail_sim.app import create_app
from symphony.services.rail_sim.server import (
    RailSimConfig,
    RailSimServer,
    add_arguments,
    config_from_args,
    run_rail_sim,
)
from symphony.services.rail_sim.simulator import (
    HangMode,
    RailSimBehaviour,
    RailSimulator,
    SimReply,
)

__all__ = [
    "HangMode",
    "RailSimBehaviour",
    "RailSimConfig",
    "RailSimServer",
    "RailSimulator",
    "SimReply",
    "add_arguments",
    "config_from_args",
    "create_app",
    "run_rail_sim",
]
