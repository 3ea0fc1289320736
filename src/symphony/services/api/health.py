"""`/healthz` (the process is up) and `/readyz` (it can serve: database and schema).

`/healthz` touches nothing but the process, so a liveness probe never restarts the API because
the database is slow. `/readyz` answers 200 only when the database answers and its schema is
exactly the one this code ships; otherwise 503 with `Retry-After` and the error envelope, so a
load balancer sends no traffic to an instance that would fail every request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from symphony.db import Database, SymphonyError, pending_migrations

RETRY_AFTER_SECONDS: Final = 5
READY_TIMEOUT_SECONDS: Final = 3.0


@dataclass(frozen=True, slots=True)
class NotReady:
    code: str
    message: str


async def check_ready(db: Database) -> NotReady | None:
    """None when ready; otherwise why not, in public words."""
    try:
        missing = await asyncio.wait_for(
            pending_migrations(db.endpoint.admin_dsn), timeout=READY_TIMEOUT_SECONDS
        )
    except TimeoutError:
        return NotReady("DATABASE_UNAVAILABLE", "the database did not answer in time")
    except SymphonyError as exc:
        return NotReady(exc.code, exc.message)
    if missing:
        return NotReady(
            "MIGRATIONS_PENDING",
            f"the database schema is behind this code ({len(missing)} migration(s) not "
            "applied): run `symphony migrate`",
        )
    return None


def health_router(db: Database) -> APIRouter:
    router = APIRouter(tags=["observability"])

    @router.get("/healthz", summary="Liveness: the process is up (does not touch the database)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: the database answers and its schema matches this code",
        responses={503: {"description": "not ready (error envelope, Retry-After)"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        problem = await check_ready(db)
        if problem is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {
                "code": problem.code,
                "message": problem.message,
                "request_id": getattr(request.state, "request_id", None),
            },
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    return router
