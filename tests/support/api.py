"""Running the HTTP API for a test: uvicorn on a loopback ephemeral port, an httpx client.

`serve(db, ...)` starts an `ApiServer` on 127.0.0.1:0 and yields it with a client whose base
URL is the real bound port; the token cache is off unless a test asks for one, so a
revocation is visible to the very next request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter

from symphony.db import Database
from symphony.services.api import ApiConfig, ApiServer, Authenticator


@dataclass(frozen=True, slots=True)
class Running:
    server: ApiServer
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return self.server.url


@asynccontextmanager
async def serve(
    db: Database,
    *,
    routers: Sequence[APIRouter] = (),
    authenticator: Authenticator | None = None,
    **config: Any,
) -> AsyncIterator[Running]:
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "auth_cache_seconds": 0}
    settings.update(config)
    server = ApiServer(db, ApiConfig(**settings), routers=routers, authenticator=authenticator)
    await server.start()
    try:
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        async with httpx.AsyncClient(base_url=server.url, trust_env=False,
                                     timeout=30.0) as client:
            yield Running(server, client)
    finally:
        await server.stop()
