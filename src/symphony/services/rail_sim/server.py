"""Rail simulator as a service: a uvicorn server run in-process on the caller's event loop.

:class:`RailSimServer` is for embedding (tests, ``symphony run``): it never
touches process signals or global logging configuration. :func:`run_rail_sim`
is the standalone entry point the CLI uses; it adds SIGTERM/SIGINT handling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from symphony.http_server import EmbeddedHttpServer
from symphony.services.rail_sim.app import create_app
from symphony.services.rail_sim.simulator import HangMode, RailSimBehaviour, RailSimulator

DEFAULT_PORT: Final = 8765
# Hangs are interrupted on stop, so this only bounds a handler that is stuck
# for some other reason.
_GRACEFUL_SHUTDOWN_SECONDS: Final = 2


class RailSimConfig(BaseModel):
    """Where the simulator listens and how it behaves initially."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="0 picks a free port")
    behaviour: RailSimBehaviour = Field(default_factory=RailSimBehaviour)


class RailSimServer(EmbeddedHttpServer):
    """The simulator's HTTP server; ``start``/``stop`` may be called repeatedly."""

    name = "rail simulator"

    def __init__(self, config: RailSimConfig | None = None) -> None:
        self._config = config or RailSimConfig()
        self._simulator = RailSimulator(self._config.behaviour)
        super().__init__(
            create_app(self._simulator),
            host=self._config.host,
            port=self._config.port,
            graceful_shutdown_seconds=_GRACEFUL_SHUTDOWN_SECONDS,
        )

    @property
    def config(self) -> RailSimConfig:
        return self._config

    @property
    def simulator(self) -> RailSimulator:
        """The live state, for assertions that should not go through HTTP."""
        return self._simulator

    def _before_serve(self) -> None:
        self._simulator.resume_waits()

    def _before_stop(self) -> None:
        # In-flight hangs end at once.
        self._simulator.interrupt_waits()

    async def serve_forever(self) -> None:
        """Start, then serve until cancelled; always stops on the way out."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


async def run_rail_sim(
    config: RailSimConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the simulator until cancelled or, with ``handle_signals``, until SIGTERM/SIGINT.

    ``config`` sets host, port (0 = free port) and initial behaviour.
    ``on_ready`` receives the base URL once requests are accepted. Leave
    ``handle_signals`` on for a dedicated process; turn it off when the caller
    manages signals itself (several services in one process).
    """
    server = RailSimServer(config)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Unavailable off the main thread and on some platforms; then the
            # caller's cancellation is the only way to stop, which still works.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop_requested.set)
                installed.append(sig)
    try:
        await server.start()
        if on_ready is not None:
            on_ready(server.url)
        await stop_requested.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await server.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's command-line options (shared by ``symphony rail-sim``)."""
    defaults = RailSimBehaviour()
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=int, default=defaults.latency_ms)
    parser.add_argument(
        "--retryable-rate",
        type=float,
        default=defaults.retryable_failure_rate,
        help="share of fresh dispatches answered 503 without executing",
    )
    parser.add_argument(
        "--terminal-rate",
        type=float,
        default=defaults.terminal_failure_rate,
        help="share of fresh dispatches declined with 422",
    )
    parser.add_argument(
        "--terminal-codes",
        default=",".join(defaults.terminal_codes),
        help="comma-separated decline codes",
    )
    parser.add_argument(
        "--hang-rate",
        type=float,
        default=defaults.hang_rate,
        help="share of fresh dispatches that withhold their answer",
    )
    parser.add_argument("--hang-seconds", type=float, default=defaults.hang_seconds)
    parser.add_argument(
        "--hang-mode",
        choices=[mode.value for mode in HangMode],
        default=defaults.hang_mode.value,
    )
    parser.add_argument("--seed", type=int, default=None, help="makes random behaviour repeatable")


def config_from_args(args: argparse.Namespace) -> RailSimConfig:
    """Build a validated config from options added by :func:`add_arguments`."""
    behaviour = RailSimBehaviour(
        latency_ms=args.latency_ms,
        retryable_failure_rate=args.retryable_rate,
        terminal_failure_rate=args.terminal_rate,
        terminal_codes=tuple(
            code for code in (part.strip() for part in args.terminal_codes.split(",")) if code
        ),
        hang_rate=args.hang_rate,
        hang_seconds=args.hang_seconds,
        hang_mode=HangMode(args.hang_mode),
        seed=args.seed,
    )
    return RailSimConfig(host=args.host, port=args.port, behaviour=behaviour)
