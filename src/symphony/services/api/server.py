"""The API as a service: uvicorn serving `create_app(...)` on the caller's asyncio loop.

`ApiServer.start()` binds (port 0 picks a free port, see `url`) and returns once requests are
accepted; `stop()` lets in-flight requests finish for a short grace period. Both tolerate
repeats. It never touches process signals or the logging configuration: the process that
embeds it (`symphony api`, `symphony run`, a test) owns those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fastapi import APIRouter, FastAPI

from symphony.db import Database
from symphony.http_server import EmbeddedHttpServer
from symphony.outbox.access import Authenticator
from symphony.services.api.app import create_app
from symphony.services.api.config import ApiConfig

_GRACEFUL_SHUTDOWN_SECONDS: Final = 5


class ApiServer(EmbeddedHttpServer):
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
        super().__init__(
            app or create_app(db, config, routers=routers, authenticator=authenticator),
            host=config.host,
            port=config.port,
            graceful_shutdown_seconds=_GRACEFUL_SHUTDOWN_SECONDS,
            # The request-context middleware logs each request, with its id; no banner.
            server_header=False,
            limits=config.connection_limits(),
        )
