"""The API as a service: uvicorn serving `create_app(...)` on the caller's asyncio loop.

`ApiServer.start()` binds (port 0 picks a free port, see `url`) and returns once requests are
accepted; `stop()` lets in-flight requests finish for a short grace period. Both tolerate
repeats. It never touches process signals or the logging configuration: the process that
embeds it (`symphony api`, `symphony run`, a test) owns those.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Sequence
from typing import Final

import uvicorn
from fastapi import APIRouter, FastAPI

from symphony.db import Database
from symphony.services.api.app import create_app
from symphony.services.api.auth import Authenticator
from symphony.services.api.config import ApiConfig

_STARTUP_TIMEOUT_SECONDS: Final = 10.0
_STARTUP_POLL_SECONDS: Final = 0.005
_GRACEFUL_SHUTDOWN_SECONDS: Final = 5


class _EmbeddedUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host process owns SIGINT/SIGTERM; uvicorn would swallow and re-raise them.
        yield


class ApiServer:
    """The HTTP API on `config.host:config.port`."""

    name = "api"

    def __init__(
        self,
        db: Database,
        config: ApiConfig,
        *,
        routers: Sequence[APIRouter] = (),
        authenticator: Authenticator | None = None,
        app: FastAPI | None = None,
    ) -> None:
        self.config = config
        self.app = app or create_app(db, config, routers=routers, authenticator=authenticator)
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Base URL with the port actually bound; only while running."""
        if self._url is None:
            raise RuntimeError("the API server is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Bind and serve; returns once requests are accepted. A no-op while running."""
        if self.running:
            return
        # Bound here rather than inside uvicorn, so "port in use" is an OSError for the
        # caller instead of a sys.exit inside a task.
        sock = _bind(self.config.host, self.config.port)
        port = sock.getsockname()[1]
        server = _EmbeddedUvicorn(uvicorn.Config(
            self.app,
            host=self.config.host,
            port=port,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,  # the request-context middleware logs each request, with its id
            server_header=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        ))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="api")
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
            raise RuntimeError("the API server did not start in time") from None
        if task.done():
            sock.close()
            exc = task.exception() if not task.cancelled() else None
            raise RuntimeError("the API server exited during start-up") from exc
        self._server, self._task = server, task
        host = self.config.host
        self._url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (briefly). A no-op when stopped."""
        server, task = self._server, self._task
        self._server = self._task = None
        self._url = None
        if server is None or task is None:
            return
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.create_server(address[:2], family=family)
    sock.setblocking(False)
    return sock
