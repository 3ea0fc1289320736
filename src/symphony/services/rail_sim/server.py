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
import socket
from collections.abc import Callable, Iterator
from typing import Final

import uvicorn
from pydantic import BaseModel, ConfigDict, Field

from symphony.services.rail_sim.app import create_app
from symphony.services.rail_sim.simulator import HangMode, RailSimBehaviour, RailSimulator

DEFAULT_PORT: Final = 8765
_STARTUP_TIMEOUT_SECONDS: Final = 10.0
_STARTUP_POLL_SECONDS: Final = 0.005
# Hangs are interrupted on stop, so this only bounds a handler that is stuck
# for some other reason.
_GRACEFUL_SHUTDOWN_SECONDS: Final = 2


class RailSimConfig(BaseModel):
    """Where the simulator listens and how it behaves initially."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="0 picks a free port")
    behaviour: RailSimBehaviour = Field(default_factory=RailSimBehaviour)


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host process owns signals; uvicorn would otherwise swallow
        # Ctrl-C/SIGTERM meant for the whole process and re-raise them later.
        yield


class RailSimServer:
    """The simulator's HTTP server; ``start``/``stop`` may be called repeatedly."""

    def __init__(self, config: RailSimConfig | None = None) -> None:
        self._config = config or RailSimConfig()
        self._simulator = RailSimulator(self._config.behaviour)
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None

    @property
    def config(self) -> RailSimConfig:
        return self._config

    @property
    def simulator(self) -> RailSimulator:
        """The live state, for assertions that should not go through HTTP."""
        return self._simulator

    @property
    def url(self) -> str:
        """Base URL with the real bound port; only valid while started."""
        if self._url is None:
            raise RuntimeError("rail simulator is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Bind and serve; returns once requests are accepted. A no-op if already running."""
        if self.running:
            return
        # Binding here instead of inside uvicorn turns "port in use" into an
        # OSError for the caller; uvicorn would call sys.exit inside a task.
        sock = _bind(self._config.host, self._config.port)
        port = sock.getsockname()[1]
        uvicorn_config = uvicorn.Config(
            create_app(self._simulator),
            host=self._config.host,
            port=port,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        )
        server = _EmbeddedUvicorn(uvicorn_config)
        self._simulator.resume_waits()
        task = asyncio.create_task(server.serve(sockets=[sock]), name="rail-sim")
        try:
            async with asyncio.timeout(_STARTUP_TIMEOUT_SECONDS):
                while not server.started:
                    if task.done():
                        break
                    await asyncio.sleep(_STARTUP_POLL_SECONDS)
        except TimeoutError:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
            sock.close()
            raise RuntimeError("rail simulator did not start in time") from None
        if task.done():
            sock.close()
            exc = task.exception() if not task.cancelled() else None
            raise RuntimeError("rail simulator exited during startup") from exc
        self._server, self._task = server, task
        self._url = f"http://{_url_host(self._config.host)}:{port}"

    async def stop(self) -> None:
        """Stop serving; in-flight hangs end at once. A no-op if not running."""
        server, task = self._server, self._task
        self._server = self._task = None
        self._url = None
        if server is None or task is None:
            return
        self._simulator.interrupt_waits()
        server.should_exit = True
        await task

    async def serve_forever(self) -> None:
        """Start, then serve until cancelled; always stops on the way out."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> RailSimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
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


def _bind(host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address[:2], family=family)
    # Inherited by every accepted connection. asyncio sets TCP_NODELAY itself only on sockets
    # whose proto is IPPROTO_TCP, and socket.create_server makes them with proto 0: without
    # it, every answer on a kept-alive connection waited ~40 ms (Nagle's algorithm holding
    # the body back until the client's delayed ACK of the headers).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
