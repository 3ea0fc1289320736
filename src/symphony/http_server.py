"""An ASGI app served by uvicorn on the caller's asyncio loop: the HTTP API and the rail
simulator are both one of these.

`start()` binds (port 0 picks a free port, see `url`) and returns once requests are accepted;
`stop()` lets in-flight requests finish for a short grace period. Both tolerate repeats. It
never touches process signals or the logging configuration: the process that embeds it (a
command, `symphony run`, a test) owns those.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any, Final, Self

import uvicorn

_STARTUP_TIMEOUT_SECONDS: Final = 10.0
_STARTUP_POLL_SECONDS: Final = 0.005


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host process owns SIGINT/SIGTERM; uvicorn would swallow them and re-raise them
        # later.
        yield


class EmbeddedHttpServer:
    """`app` on `host:port`; subclasses hook into the start and the stop."""

    name = "http"

    def __init__(
        self,
        app: Any,
        *,
        host: str,
        port: int,
        graceful_shutdown_seconds: int,
        server_header: bool = True,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._graceful_shutdown_seconds = graceful_shutdown_seconds
        self._server_header = server_header
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL with the port actually bound; only while running."""
        if self._url is None:
            raise RuntimeError(f"the {self.name} server is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _before_serve(self) -> None:
        """Called once the socket is bound, before the first request can arrive."""

    def _before_stop(self) -> None:
        """Called when a stop begins, before uvicorn is told to exit."""

    async def start(self) -> None:
        """Bind and serve; returns once requests are accepted. A no-op while running."""
        if self.running:
            return
        # Bound here rather than inside uvicorn, so "port in use" is an OSError for the
        # caller instead of a sys.exit inside a task.
        sock = _bind(self.host, self.port)
        port = sock.getsockname()[1]
        server = _EmbeddedUvicorn(uvicorn.Config(
            self.app,
            host=self.host,
            port=port,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=self._server_header,
            timeout_graceful_shutdown=self._graceful_shutdown_seconds,
        ))
        self._before_serve()
        task = asyncio.create_task(server.serve(sockets=[sock]), name=self.name)
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
            raise RuntimeError(f"the {self.name} server did not start in time") from None
        if task.done():
            sock.close()
            exc = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"the {self.name} server exited during start-up") from exc
        self._server, self._task = server, task
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (briefly). A no-op when stopped."""
        server, task = self._server, self._task
        self._server = self._task = None
        self._url = None
        if server is None or task is None:
            return
        self._before_stop()
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


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
