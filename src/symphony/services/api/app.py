"""The one FastAPI app of Symphony: participant API, operator API, health, docs.

`create_app(db, config, routers=...)` builds it. Other packages extend it by handing in their
own `APIRouter`s, which may use the dependencies of `symphony.services.api.auth`
(`require_participant`, `require_operator`) and `symphony.services.api.context.get_context`.
Every response carries `X-Request-Id`; every error is the envelope of
`symphony.services.api.error`.

The interactive docs at `/docs` load Swagger UI from this server (the `swagger-ui-bundle-v2`
package ships its files), never from a CDN: they work with no internet access.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Final

import swagger_ui_bundle
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from symphony.db import (
    Database,
    DatabaseUnavailableError,
    QueryTimeoutError,
    SymphonyError,
)
from symphony.outbox import OutboxStore
from symphony.outbox.access import AccessStore, Authenticator
from symphony.services.api.auth import CachedAuthenticator
from symphony.services.api.config import ApiConfig
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.error import (
    EXCEPTION_HANDLERS,
    ApiError,
    ErrorBody,
    error_response,
    request_id_of,
)
from symphony.services.api.events import router as events_router
from symphony.services.api.middleware import RequestContextMiddleware
from symphony.services.api.participant import router as participant_router

log = logging.getLogger("symphony.api")

API_TITLE: Final = "Symphony Outbox API"
API_VERSION: Final = "1.0.0"
DOCS_ASSETS: Final = "/docs/assets"


def create_app(
    db: Database,
    config: ApiConfig,
    *,
    routers: Sequence[APIRouter] = (),
    authenticator: Authenticator | None = None,
) -> FastAPI:
    """The API app on `db`: health, docs, the participant API and then `routers`, mounted as
    given (with their own prefixes). `authenticator` defaults to the database's token store
    (`AccessStore`); tests may hand in another."""
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="Submit payment instructions and follow them to a terminal state. "
        "Every error body is `{code, message, request_id}`; every response has X-Request-Id.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        responses={500: {"model": ErrorBody, "description": "unexpected failure"}},
        # No redirect from `/path/` to `/path`: Starlette builds its Location from the
        # request's Host header. A trailing slash is a miss like any other (404 envelope).
        redirect_slashes=False,
    )
    app.state.symphony = ApiContext(
        db=db,
        # Group commit: concurrent POST /v1/payments share one batch transaction, each still
        # answered only after its own item committed, with its own result or error.
        store=OutboxStore(db, group_commit=True),
        authenticator=CachedAuthenticator(
            authenticator if authenticator is not None else AccessStore(db),
            config.auth_cache_seconds,
        ),
        config=config,
    )
    for kind, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(SymphonyError, _symphony_error_handler(config.retry_after_seconds))
    app.add_middleware(
        RequestContextMiddleware,
        body_limit_bytes=config.body_limit_bytes,
        body_timeout_seconds=config.body_timeout_seconds,
        request_timeout_seconds=config.request_timeout_seconds,
        retry_after_seconds=config.retry_after_seconds,
    )
    app.include_router(_health_router())
    _mount_docs(app)
    app.include_router(participant_router)
    app.include_router(events_router)
    for router in routers:
        app.include_router(router)
    return app


def _symphony_error_handler(
    retry_after: int,
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SymphonyError)
        rid = request_id_of(request)
        if isinstance(exc, DatabaseUnavailableError | QueryTimeoutError):
            log.warning("database unavailable: %s", exc.code,
                        extra={"request_id": rid, "incident_id": exc.incident_id})
            return error_response(rid, 503, "service_unavailable",
                                  "the service cannot reach its database; retry later",
                                  headers={"Retry-After": str(retry_after)})
        log.error("unexpected database error %s", exc.code,
                  extra={"request_id": rid, "incident_id": exc.incident_id})
        return error_response(rid, 500, "internal_error",
                              "the request failed; quote the request id when reporting it")

    return handle


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    schema_version: int | None
    expected_schema_version: int


def _health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="liveness: the process serves requests",
                response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        summary="readiness: the database answers and its schema matches this code",
        response_model=Readiness,
        responses={503: {"model": ErrorBody}},
    )
    async def readyz(context: Annotated[ApiContext, Depends(get_context)]) -> Readiness:
        status = await context.db.schema_status()
        if not status.ok:
            raise ApiError(503, "schema_mismatch",
                           "the database schema does not match this code: run symphony migrate",
                           headers={"Retry-After": str(context.config.retry_after_seconds)})
        return Readiness(status="ready", schema_version=status.applied_version,
                         expected_schema_version=status.expected_version)

    return router


def _mount_docs(app: FastAPI) -> None:
    assets = Path(str(swagger_ui_bundle.swagger_ui_path))
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{API_TITLE} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )
