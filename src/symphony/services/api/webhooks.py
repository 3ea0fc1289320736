"""Webhook endpoints over HTTP: the participant's own, and the operator's view and actions.

    POST   /v1/webhook_endpoints                      register (url, event_types): the
                                                       signing secret whsec_... is in this
                                                       answer and never again
    GET    /v1/webhook_endpoints                      the caller's endpoints with their health
    DELETE /v1/webhook_endpoints/{id}                 delete (pending deliveries abandoned)
    POST   /v1/webhook_endpoints/{id}/rotate_secret   a new secret; the old ones keep signing
                                                       for overlap_seconds (default 24 h)

    GET    /v1/ops/webhook_endpoints                  every endpoint, failing first
    GET    /v1/ops/webhook_health                     counts for the dashboard's card (mounted
                                                       with the operator API)
    POST   /v1/ops/webhook_endpoints/{id}/disable     stop delivering (events keep, and are
    POST   /v1/ops/webhook_endpoints/{id}/enable      delivered after enabling)
    GET    /v1/ops/webhook_endpoints/{id}/deliveries  newest deliveries with their last attempt
    POST   /v1/ops/webhook_deliveries/{id}/replay     send the delivery's event again

The URL is outside input: judged by `symphony.webhooks.urlsafety` (scheme, host, every
resolved address) before anything is written, each refusal a field error with its own code.
Everything runs as `symphony_webhooks`, which can create and rotate a secret but never read
one back: the secret is shown only in the answer that made it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symphony.db import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    SymphonyError,
)
from symphony.outbox.access import Caller
from symphony.outbox.operators import OperatorStore
from symphony.services.api.auth import require_operator, require_participant
from symphony.services.api.body import parse_json as _parse_json
from symphony.services.api.body import read_json
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.error import ApiError, ErrorBody, FieldError, validation_field_error
from symphony.services.api.operators import action_refused
from symphony.services.api.participant import _require_json
from symphony.webhooks import (
    EVENT_TYPES,
    SecretBox,
    UrlPolicy,
    UrlRefused,
    WebhookStore,
    check_url,
)
from symphony.webhooks.store import DEFAULT_OVERLAP_SECONDS, MAX_OVERLAP_SECONDS, Endpoint

M = TypeVar("M", bound=BaseModel)
PREFIX: Final = "/v1/webhook_endpoints"
_NO_STORE: Final = {"Cache-Control": "no-store"}
_FIELD_OF_CODE: Final[dict[str, str | None]] = {
    "INVALID_WEBHOOK_URL": "url",
    "INVALID_EVENT_TYPES": "event_types",
    "INVALID_DESCRIPTION": "description",
    "INVALID_OVERLAP": "overlap_seconds",
    "INVALID_REASON": "reason",
    "INVALID_ACTION_REASON": "reason",
}


class EndpointRequest(BaseModel):
    """A webhook endpoint: where to send which of your events."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "url": "https://hooks.example.com/symphony",
        "event_types": ["payment.dispatched", "payment.failed"],
        "description": "ledger sync",
    }]})

    url: str = Field(max_length=2048, description="https:// URL of a public host")
    event_types: list[str] = Field(min_length=1, max_length=5,
                                   description=f"1-5 of: {', '.join(EVENT_TYPES)}")
    description: str = Field(default="", max_length=200)


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    overlap_seconds: int = Field(
        default=DEFAULT_OVERLAP_SECONDS, ge=0, le=MAX_OVERLAP_SECONDS,
        description="how long the previous secret(s) keep signing (both signatures are sent)")


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(min_length=1, max_length=500)


class EndpointCreated(BaseModel):
    id: UUID
    url: str
    event_types: list[str]
    description: str
    status: str
    created_at: datetime
    secret: str = Field(description="whsec_...: shown once, in this answer only")


class EndpointView(BaseModel):
    id: UUID
    url: str
    event_types: list[str]
    description: str
    status: str
    failing: bool
    consecutive_failures: int
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error_class: str | None
    live_secrets: int
    created_at: datetime


class EndpointList(BaseModel):
    data: list[EndpointView]


class SecretRotated(BaseModel):
    id: UUID
    secret: str = Field(description="the new whsec_...: shown once")
    previous_secrets_expire_at: datetime


class EndpointDeleted(BaseModel):
    id: UUID
    deleted: bool
    abandoned_deliveries: int


# Module level: the routes' annotations are strings (postponed), resolved in this module.
CallerDep = Annotated[Caller, Depends(require_participant)]
OperatorDep = Annotated[Caller, Depends(require_operator)]
ContextDep = Annotated[ApiContext, Depends(get_context)]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


def webhook_routers(box: SecretBox | None, policy: UrlPolicy) -> list[APIRouter]:
    """The participant's webhook routes. Without a key (`box` None) the routes that seal a
    secret answer 503 `webhook_key_missing`; the others work. The operator's webhook routes
    (`webhook_ops_router`, `webhook_health_router`) are mounted with the operator API, where
    the dashboard that uses them is."""
    return [_participant_router(box, policy)]


def _sealing(box: SecretBox | None) -> SecretBox:
    if box is None:
        raise ApiError(503, "webhook_key_missing",
                       "webhook endpoints cannot be registered or rotated: the service has no "
                       "webhook key (SYMPHONY_WEBHOOK_KEY)")
    return box


def _participant_router(box: SecretBox | None, policy: UrlPolicy) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["webhooks"])

    @router.post("", status_code=201, response_model=EndpointCreated,
                 summary="register a webhook endpoint (the signing secret is shown once)",
                 responses=_errors(401, 409, 415, 422, 503),
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": EndpointRequest.model_json_schema()}}}})
    async def create(request: Request, caller: CallerDep, context: ContextDep) -> JSONResponse:
        _require_json(request)
        body = _model(EndpointRequest, _parse_json(await request.body()))
        try:
            await check_url(body.url, policy)
        except UrlRefused as refused:
            raise _invalid("url", refused.code, refused.message) from None
        store = WebhookStore(context.db, _sealing(box))
        try:
            made = await store.create_endpoint(_pid(caller), body.url, body.event_types,
                                               body.description)
        except SymphonyError as exc:
            raise _refusal(exc) from None
        created = EndpointCreated(id=made.endpoint_id, url=made.url,
                                  event_types=made.event_types, description=made.description,
                                  status=made.status, created_at=made.created_at,
                                  secret=made.secret)
        return JSONResponse(created.model_dump(mode="json"), status_code=201,
                            headers={"Location": f"{PREFIX}/{made.endpoint_id}", **_NO_STORE})

    @router.get("", response_model=EndpointList, summary="your webhook endpoints",
                responses=_errors(401, 503))
    async def list_endpoints(caller: CallerDep, context: ContextDep) -> JSONResponse:
        endpoints = await WebhookStore(context.db).endpoints_of(_pid(caller))
        page = EndpointList(data=[_view(e) for e in endpoints])
        return JSONResponse(page.model_dump(mode="json"), headers=_NO_STORE)

    @router.delete("/{endpoint_id}", response_model=EndpointDeleted,
                   summary="delete one of your endpoints", responses=_errors(401, 404, 503))
    async def delete(endpoint_id: str, caller: CallerDep, context: ContextDep) -> JSONResponse:
        wanted = _uuid(endpoint_id)
        try:
            abandoned = await WebhookStore(context.db).delete_endpoint(_pid(caller), wanted)
        except SymphonyError as exc:
            raise _refusal(exc) from None
        answer = EndpointDeleted(id=wanted, deleted=True, abandoned_deliveries=abandoned)
        return JSONResponse(answer.model_dump(mode="json"), headers=_NO_STORE)

    @router.post("/{endpoint_id}/rotate_secret", response_model=SecretRotated,
                 summary="a new signing secret; the previous ones sign too until the overlap "
                         "ends", responses=_errors(401, 404, 415, 422, 503))
    async def rotate(endpoint_id: str, request: Request, caller: CallerDep,
                     context: ContextDep) -> JSONResponse:
        wanted = _uuid(endpoint_id)
        raw = await request.body()
        if raw.strip():
            _require_json(request)
            body = _model(RotateRequest, _parse_json(raw))
        else:
            body = RotateRequest()
        try:
            rotated = await WebhookStore(context.db, _sealing(box)).rotate_secret(
                _pid(caller), wanted, body.overlap_seconds)
        except SymphonyError as exc:
            raise _refusal(exc) from None
        answer = SecretRotated(id=wanted, secret=rotated.secret,
                               previous_secrets_expire_at=rotated.previous_expires_at)
        return JSONResponse(answer.model_dump(mode="json"), headers=_NO_STORE)

    return router


def webhook_ops_router() -> APIRouter:
    """The operator's webhook routes: every endpoint, disable/enable, an endpoint's
    deliveries, and the replay (an operator action recorded with the token)."""
    router = APIRouter(prefix="/v1/ops", tags=["operator"])

    @router.get("/webhook_endpoints", summary="every webhook endpoint, failing first",
                responses=_errors(401, 422, 503))
    async def ops_list(
        _caller: OperatorDep, context: ContextDep,
        status: Annotated[str | None, Query(
            pattern="^(ENABLED|DISABLED|DELETED|FAILING)$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        rows = await WebhookStore(context.db).ops_endpoints(status=status, limit=limit)
        data = [{**r, "id": r.pop("endpoint_id"), "failing": r["failing_since"] is not None}
                for r in rows]
        return JSONResponse(_json({"data": data}), headers=_NO_STORE)

    for action, enabled in (("disable", False), ("enable", True)):
        _add_toggle(router, action, enabled)

    @router.get("/webhook_endpoints/{endpoint_id}/deliveries",
                summary="an endpoint's newest deliveries", responses=_errors(401, 404, 503))
    async def ops_deliveries(
        endpoint_id: str, _caller: OperatorDep, context: ContextDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> JSONResponse:
        try:
            rows = await WebhookStore(context.db).deliveries(_uuid(endpoint_id), limit=limit)
        except SymphonyError as exc:
            raise _refusal(exc) from None
        return JSONResponse(_json({"data": rows}), headers=_NO_STORE)

    @router.post("/webhook_deliveries/{delivery_id}/replay",
                 summary="send a delivery's event again (a new delivery, same webhook-id); "
                         "a reason is required and the replay is recorded with the token",
                 responses=_errors(401, 403, 404, 409, 415, 422, 503),
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": ReasonRequest.model_json_schema()}}}})
    async def ops_replay(delivery_id: str, request: Request, caller: OperatorDep,
                         context: ContextDep) -> JSONResponse:
        _may_act(caller)
        wanted = _uuid(delivery_id)
        _require_json(request)
        body = _model(ReasonRequest, await read_json(request))
        try:
            row = await OperatorStore(context.db).replay_webhook_delivery(
                caller, wanted, body.reason)
        except PermissionDeniedError as exc:
            raise action_refused(exc) from None
        except SymphonyError as exc:
            raise _refusal(exc) from None
        if row["result"] == "REPLAY_PENDING":
            raise ApiError(409, "replay_pending",
                           "a replay of this delivery is already waiting to be sent (see "
                           "current): nothing was queued", current=_json(_replay_state(row)))
        if row["result"] == "ENDPOINT_DELETED":
            raise ApiError(409, "webhook_endpoint_deleted",
                           "the webhook endpoint was deleted: nothing was queued",
                           current=_json(_replay_state(row)))
        return JSONResponse(_json(row), status_code=201, headers=_NO_STORE)

    return router


def webhook_health_router() -> APIRouter:
    """`GET /v1/ops/webhook_health`: mounted with the operator API wherever the dashboard is
    (its card reads it), whether or not the webhook routes are."""
    router = APIRouter(prefix="/v1/ops", tags=["operator"])

    @router.get("/webhook_health", summary="webhook endpoints and deliveries at a glance",
                responses=_errors(401, 503))
    async def ops_health(_caller: OperatorDep, context: ContextDep) -> JSONResponse:
        health = await WebhookStore(context.db).health()
        oldest = health.pop("oldest_due_at")
        observed = health["observed_at"]
        health["oldest_due_age_seconds"] = (
            None if oldest is None else max(0.0, (observed - oldest).total_seconds()))
        failing = await WebhookStore(context.db).ops_endpoints(status="FAILING", limit=20)
        health["failing"] = [
            {"id": r["endpoint_id"], "participant_id": r["participant_id"], "url": r["url"],
             "failing_since": r["failing_since"], "consecutive_failures":
                 r["consecutive_failures"], "last_error_class": r["last_error_class"]}
            for r in failing]
        return JSONResponse(_json(health), headers=_NO_STORE)

    return router


def _replay_state(row: dict[str, Any]) -> dict[str, Any]:
    """Where a replay that was not made stands: the waiting replay, or the deleted endpoint."""
    return {k: row[k] for k in ("delivery_id", "replay_of", "status", "endpoint_id",
                                "endpoint_status")}


def _may_act(caller: Caller) -> None:
    """Disabling, enabling and replaying are actions: an OPERATOR-scope token only (a VIEWER
    token reads)."""
    if not caller.may_act:
        raise ApiError(403, "insufficient_scope",
                       "only an operator token of OPERATOR scope may act (this one may read)")


def _add_toggle(router: APIRouter, action: str, enabled: bool) -> None:
    @router.post(f"/webhook_endpoints/{{endpoint_id}}/{action}",
                 summary=f"{action} a webhook endpoint (a reason is required)",
                 responses=_errors(401, 403, 404, 409, 415, 422, 503), name=f"ops_{action}")
    async def toggle(
        endpoint_id: str, request: Request, _caller: OperatorDep, context: ContextDep,
    ) -> JSONResponse:
        _may_act(_caller)
        wanted = _uuid(endpoint_id)
        _require_json(request)
        body = _model(ReasonRequest, _parse_json(await request.body()))
        try:
            row = await WebhookStore(context.db).set_enabled(wanted, enabled, body.reason)
        except SymphonyError as exc:
            raise _refusal(exc) from None
        return JSONResponse(_json(row), headers=_NO_STORE)


# -- helpers ------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    """Rows with UUIDs and datetimes as JSON."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _pid(caller: Caller) -> str:
    assert caller.participant_id  # require_participant guarantees it
    return caller.participant_id


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise ApiError(404, "not_found", "no such resource") from None


def _model(kind: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise _invalid(None, "INVALID_BODY", "the body must be a JSON object")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        errors = [validation_field_error({**e, "loc": ("body", *e["loc"])})
                  for e in exc.errors(include_url=False, include_input=False)]
        raise ApiError(422, "invalid_request", "the request has invalid fields",
                       errors=errors) from None


def _invalid(field: str | None, code: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", "the request has invalid fields",
                    errors=[FieldError(field=field, code=code, message=message)])


def _refusal(exc: SymphonyError) -> Exception:
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", "no such resource")
    if exc.code == "PARTICIPANT_NOT_ACTIVE":
        return ApiError(401, "unauthorized", "the participant of this token is not active",
                        headers={"WWW-Authenticate":
                                 'Bearer realm="symphony", error="invalid_token"'})
    if isinstance(exc, ConflictError):
        return ApiError(409, exc.code.lower(), exc.message)
    if isinstance(exc, InvalidRequestError):
        return _invalid(_FIELD_OF_CODE.get(exc.code), exc.code, exc.message)
    return exc


def _view(e: Endpoint) -> EndpointView:
    return EndpointView(
        id=e.endpoint_id, url=e.url, event_types=e.event_types, description=e.description,
        status=e.status, failing=e.failing_since is not None,
        consecutive_failures=e.consecutive_failures, failing_since=e.failing_since,
        last_success_at=e.last_success_at, last_failure_at=e.last_failure_at,
        last_error_class=e.last_error_class, live_secrets=e.live_secrets,
        created_at=e.created_at)
