"""HTTP shell of the rail simulator: maps requests onto :class:`RailSimulator`.

Request bodies are parsed by hand rather than through FastAPI models so every
error answer has the rail's ``{"code", "message"}`` shape; FastAPI's own 422
validation body would look like a payment decline to a client.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from symphony.services.rail_sim.simulator import RailSimBehaviour, RailSimulator, SimReply

IDEMPOTENCY_HEADER = "Idempotency-Key"


def _json(reply: SimReply) -> JSONResponse:
    return JSONResponse(reply.body, status_code=reply.status_code)


async def _read_json(request: Request) -> tuple[Any, JSONResponse | None]:
    raw = await request.body()
    try:
        return json.loads(raw), None
    except (UnicodeDecodeError, ValueError):
        return None, JSONResponse(
            {"code": "INVALID_JSON", "message": "body must be JSON"}, status_code=400
        )


def create_app(simulator: RailSimulator) -> FastAPI:
    """Build the simulator's ASGI app around ``simulator`` (shared, so tests can inspect it)."""
    # No trailing-slash redirect: its Location would be built from the request's Host header.
    app = FastAPI(title="Symphony rail simulator", docs_url=None, redoc_url=None,
                  redirect_slashes=False)

    # Every handler is ``async def`` on purpose: they then run on the event
    # loop, never in FastAPI's thread pool, which the simulator's lock relies on.

    @app.post("/v1/payments")
    async def dispatch(request: Request) -> JSONResponse:
        body, error = await _read_json(request)
        if error is not None:
            return error
        reply = await simulator.dispatch(request.headers.get(IDEMPOTENCY_HEADER), body)
        return _json(reply)

    @app.get("/v1/payments/{reference}")
    async def lookup(reference: str) -> JSONResponse:
        return _json(simulator.lookup(reference))

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        return simulator.stats()

    @app.post("/v1/reset")
    async def reset() -> dict[str, Any]:
        simulator.reset()
        return {"status": "reset"}

    @app.get("/v1/behaviour")
    async def get_behaviour() -> dict[str, Any]:
        return simulator.behaviour.model_dump(mode="json")

    @app.put("/v1/behaviour")
    async def put_behaviour(request: Request) -> JSONResponse:
        body, error = await _read_json(request)
        if error is not None:
            return error
        try:
            behaviour = RailSimBehaviour.model_validate(body)
        except ValidationError as exc:
            return JSONResponse(
                {"code": "INVALID_BEHAVIOUR", "message": str(exc)[:1000]}, status_code=400
            )
        simulator.set_behaviour(behaviour)
        return JSONResponse(behaviour.model_dump(mode="json"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
