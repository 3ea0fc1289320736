"""The operator API's browse, fleet, participant view and actions (`/v1/ops/...`).

Reads need an operator token of either scope; actions need OPERATOR scope: a VIEWER token on
an action is 403 `insufficient_scope` (the token is known to be an operator's, so 403, not
401) and nothing is written. Each action is one database function that verifies the acting
token itself and records the action append-only with the token's id and label and the
reason; an action that lost a race (the item moved on, the participant or token was revoked
meanwhile) is 409 with `current`, where the thing stands now.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symphony.db import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Role,
)
from symphony.outbox.access import Caller, TokenScope
from symphony.outbox.operators import BROWSE_STATES, MAX_BROWSE_LIMIT, OperatorStore
from symphony.services.api.auth import require_operator
from symphony.services.api.body import read_json
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.error import ApiError, ErrorBody, validation_field_error
from symphony.services.api.participant import _require_json

_NO_STORE = {"Cache-Control": "no-store"}
_PARTICIPANT_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class Whoami(BaseModel):
    token_id: UUID
    label: str
    scope: str = Field(description="VIEWER (reads) or OPERATOR (also acts)")
    may_act: bool


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Literal["DISPATCHED", "FAILED"] = Field(
        description="the rail's confirmed outcome")
    reason: str = Field(min_length=1, max_length=500)
    rail_transaction_id: str | None = Field(
        default=None, max_length=200,
        description="the rail's transaction id (required for DISPATCHED)")


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


def _ops(context: Annotated[ApiContext, Depends(get_context)]) -> OperatorStore:
    return OperatorStore(context.db)


Ops = Annotated[OperatorStore, Depends(_ops)]
Operator = Annotated[Caller, Depends(require_operator)]


def _acting(caller: Caller) -> Caller:
    """The caller, if its scope lets it act; else 403 insufficient_scope."""
    if not caller.may_act:
        raise ApiError(403, "insufficient_scope",
                       "this operator token may read but not act (scope VIEWER); use a token "
                       "issued with --scope operator")
    return caller


async def _body(request: Request, model: type[BaseModel]) -> Any:
    _require_json(request)
    raw = await read_json(request)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", "the request has invalid fields",
                       errors=[validation_field_error(e) for e in exc.errors()]) from None


def action_refused(exc: InvalidRequestError | PermissionDeniedError | NotFoundError) -> ApiError:
    """The answer to an action the database refused: a viewer's token 403, a token revoked
    meanwhile 401, an unknown target 404, bad input 422."""
    if isinstance(exc, PermissionDeniedError):
        if exc.code == "INSUFFICIENT_SCOPE":
            return ApiError(403, "insufficient_scope",
                            "this operator token may read but not act (scope VIEWER)")
        # The token was revoked between authentication and the action.
        return ApiError(401, "unauthorized", "the token is not valid for this endpoint",
                        headers={"WWW-Authenticate": 'Bearer realm="symphony", '
                                                     'error="invalid_token"'})
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", exc.message)
    return ApiError(422, "invalid_request", exc.message)


def operators_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1/ops",
        tags=["operations"],
        responses={401: {"model": ErrorBody, "description": "no operator token"}},
    )
    acts: dict[int | str, dict[str, Any]] = {403: {"model": ErrorBody, "description": "the token's scope is VIEWER"},
            409: {"model": ErrorBody, "description": "lost a race: `current` says where the "
                                                      "thing stands now"}}

    @router.get("/whoami", summary="The operator token in use: its label and scope")
    async def whoami(caller: Operator) -> Whoami:
        return Whoami(token_id=caller.token_id, label=caller.label,
                      scope=(caller.scope or TokenScope.VIEWER).value, may_act=caller.may_act)

    @router.get("/payments", summary="Browse the queue by cursor, newest first (REVIEW: "
                                     "oldest first)")
    async def browse(
        caller: Operator,
        ops: Ops,
        state: Annotated[str | None, Query(description=", ".join(BROWSE_STATES))] = None,
        participant: Annotated[str | None, Query(pattern=_PARTICIPANT_ID)] = None,
        rail: Annotated[str | None, Query(pattern=r"^[A-Z0-9_]{1,32}$")] = None,
        after: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_BROWSE_LIMIT)] = 50,
    ) -> JSONResponse:
        try:
            page = await ops.browse(state=state, participant=participant, rail=rail,
                                    after=after, limit=limit)
        except InvalidRequestError as exc:
            raise ApiError(422, "invalid_request", exc.message) from None
        body = {"data": page.items, "has_more": page.has_more, "next_after": page.next_after,
                "scanned": page.scanned}
        return JSONResponse(jsonable_encoder(body), headers=_NO_STORE)

    @router.post("/payments/{outbox_id}/resolve", status_code=200, responses=acts,
                 summary="Resolve an item under review with the rail's confirmed outcome")
    async def resolve(
        outbox_id: UUID, request: Request, caller: Operator, ops: Ops,
        context: Annotated[ApiContext, Depends(get_context)],
    ) -> dict[str, Any]:
        actor = _acting(caller)
        body: ResolveRequest = await _body(request, ResolveRequest)
        try:
            done = await ops.resolve_review(actor, outbox_id, body.outcome, body.reason,
                                            body.rail_transaction_id)
        except InvalidRequestError as exc:
            if exc.code != "NOT_UNDER_REVIEW":
                raise action_refused(exc) from None
            current = await _current_item(context, outbox_id)
            if current is None:
                raise ApiError(404, "not_found", "no payment with this outbox id") from None
            raise ApiError(409, "not_under_review",
                           "the item is not under review (any more): see current",
                           current=current) from None
        except (PermissionDeniedError, NotFoundError) as exc:
            raise action_refused(exc) from None
        return done

    @router.get("/participants/{participant_id}",
                summary="One participant: counts by state, oldest pending, failure rate")
    async def participant(
        caller: Operator, ops: Ops,
        participant_id: Annotated[str, Path(pattern=_PARTICIPANT_ID)],
    ) -> dict[str, Any]:
        summary = await ops.participant_summary(participant_id)
        if summary is None:
            raise ApiError(404, "not_found", "no participant with this id")
        return {**summary, "actions": await ops.participant_actions(participant_id)}

    @router.post("/participants/{participant_id}/revoke", responses=acts,
                 summary="Revoke a participant and all its tokens (irreversible)")
    async def revoke_participant(
        request: Request, caller: Operator, ops: Ops,
        participant_id: Annotated[str, Path(pattern=_PARTICIPANT_ID)],
    ) -> dict[str, Any]:
        actor = _acting(caller)
        body: ReasonRequest = await _body(request, ReasonRequest)
        try:
            return await ops.revoke_participant(actor, participant_id, body.reason)
        except ConflictError:
            summary = await ops.participant_summary(participant_id)
            raise ApiError(409, "already_revoked", "the participant is already revoked",
                           current={"participant_id": participant_id,
                                    "status": summary["status"] if summary else None}) from None
        except (InvalidRequestError, PermissionDeniedError, NotFoundError) as exc:
            raise action_refused(exc) from None

    @router.get("/tokens", summary="API tokens (no secrets), newest first")
    async def tokens(
        caller: Operator, ops: Ops,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> dict[str, Any]:
        return {"data": await ops.tokens(limit)}

    @router.post("/tokens/{token_id}/revoke", responses=acts,
                 summary="Revoke a token (irreversible)")
    async def revoke_token(
        token_id: UUID, request: Request, caller: Operator, ops: Ops,
    ) -> dict[str, Any]:
        actor = _acting(caller)
        body: ReasonRequest = await _body(request, ReasonRequest)
        try:
            return await ops.revoke_token(actor, token_id, body.reason)
        except ConflictError:
            raise ApiError(409, "already_revoked", "the token is already revoked",
                           current={"token_id": str(token_id), "revoked": True}) from None
        except (InvalidRequestError, PermissionDeniedError, NotFoundError) as exc:
            raise action_refused(exc) from None

    @router.get("/fleet", summary="Workers (live and stale) and buckets no live worker covers")
    async def fleet(caller: Operator, ops: Ops) -> dict[str, Any]:
        found = await ops.fleet()
        return {**found.as_dict(), "observed_at": found.observed_at}

    return router


async def _current_item(context: ApiContext, outbox_id: UUID) -> dict[str, Any] | None:
    found = await context.store.item_with_ledger(outbox_id, Role.READONLY)
    if found is None:
        return None
    summary, _ = found
    return {"outbox_id": str(outbox_id), "state": item_state(summary),
            "under_review": summary.get("review_reason") is not None}


def item_state(summary: dict[str, Any]) -> str:
    """Where an item stands, as the browse names it."""
    terminal = summary.get("terminal_state")
    if terminal:
        return str(terminal)
    if summary.get("review_reason") is not None:
        return "REVIEW"
    return "DISPATCHING" if summary.get("lease_expires_at") else "PENDING"

