"""The operator API: `/v1/ops/...`, every route behind an operator token.

What the supervisor (and the dashboard at `/`) reads: the queue's counts, one item's registry
entry with its whole ledger, the newest failures, and how many items ended per minute. All of
it is read as `symphony_readonly` through `OutboxStore`'s named queries; the API's login may
become no other reading role, and readonly sees every column an operator needs (never a lease
token, never `participant_outbox_sequences`). Every answer is bounded: the lists take a limit
with a maximum, and each query reads an index, not the ledger (tests/unit/test_ops_query_plans).

One action lives here: `POST /v1/ops/payments/{id}/cancel` (symphony.outbox.cancel), run as
`symphony_operator`, whose function verifies the acting token and its OPERATOR scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symphony.db import InvalidRequestError, NotFoundError, PermissionDeniedError, Role
from symphony.outbox import OutboxStore
from symphony.outbox.access import Caller
from symphony.outbox.cancel import CancelStore
from symphony.outbox.operators import OperatorStore
from symphony.outbox.store import MAX_FAILURES_LIMIT, MAX_THROUGHPUT_MINUTES
from symphony.services.api.auth import require_operator
from symphony.services.api.body import read_json
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.dashboard import dashboard_router
from symphony.services.api.error import ApiError, ErrorBody, FieldError, validation_field_error
from symphony.services.api.metrics import metrics_router
from symphony.services.api.operators import operators_router
from symphony.services.api.webhooks import webhook_health_router, webhook_ops_router

DEFAULT_FAILURES_LIMIT = 50
DEFAULT_THROUGHPUT_MINUTES = 30


class OpsStatus(BaseModel):
    """The supervisor view: the queue by state and the totals of items that ended."""

    due: int = Field(description="pending, not leased, claimable now")
    scheduled: int = Field(description="pending, not leased, waiting for a retry backoff")
    dispatching: int = Field(description="leased by a worker, lease still valid")
    zombies: int = Field(description="leased, lease expired: awaiting the zombie repair")
    awaiting_lookup: int = Field(
        description="pending items whose last attempt may have executed (rail asked first)"
    )
    under_review: int = Field(
        description="pending items that may have executed and that the rail did not settle "
                    "within the retry ceiling: no worker touches them until an operator "
                    "records the rail's outcome (symphony review resolve)"
    )
    pending_total: int
    dispatched_total: int
    failed_total: int
    oldest_pending_at: datetime | None
    oldest_pending_age_seconds: float | None = Field(
        description="age of the oldest pending item by the database clock; null when none"
    )
    observed_at: datetime = Field(description="the database's time of this reading")
    fleet: FleetSummary | None = Field(
        default=None, description="the workers' heartbeats: live, stale, uncovered buckets")


class LedgerRow(BaseModel):
    attempt_no: int
    state: str
    worker_id: str | None
    error_code: str | None
    error_detail: str | None
    rail_transaction_id: str | None
    recorded_at: datetime


class OperatorAction(BaseModel):
    action_id: int | None
    action: str
    actor_token_id: UUID | None
    actor_label: str
    reason: str
    outcome: dict[str, Any]
    recorded_at: datetime
    recorded_by: str


class FleetSummary(BaseModel):
    live_workers: int
    stale_workers: int
    uncovered_buckets: list[dict[str, int]] = Field(
        description="routing bucket ranges no live worker covers: items there wait for nobody")
    uncovered_bucket_count: int
    alert: bool = Field(description="true while any bucket is uncovered")


class OpsItem(BaseModel):
    """One item: its registry entry, where it stands now, and its full ledger (oldest first)."""

    outbox_id: UUID
    state: str = Field(description="DISPATCHED or FAILED when ended; else DISPATCHING or PENDING")
    instruction_id: str
    idempotency_key: str
    participant_id: str
    rail_type: str
    payload: dict[str, Any]
    created_at: datetime
    pending: bool
    attempt_count: int | None
    next_attempt_at: datetime | None
    lease_expires_at: datetime | None
    claimed_by: str | None
    terminal_state: str | None
    review_reason: str | None = Field(
        default=None, description="set while the item waits for an operator (under review)")
    review_since: datetime | None = None
    ledger: list[LedgerRow]
    actions: list[OperatorAction] = Field(
        default_factory=list,
        description="operator actions on the item, oldest first: who (token id and label, "
                    "or the operator named on the command line), why, and what came of it")


class Failure(BaseModel):
    outbox_id: UUID
    attempt_no: int
    error_code: str | None
    error_detail: str | None
    worker_id: str | None
    failed_at: datetime
    participant_id: str
    instruction_id: str
    rail_type: str
    created_at: datetime


class FailureList(BaseModel):
    limit: int
    items: list[Failure] = Field(description="newest first")


class ThroughputBucket(BaseModel):
    minute: datetime = Field(description="start of the minute")
    dispatched: int
    failed: int


class Throughput(BaseModel):
    minutes: int
    buckets: list[ThroughputBucket] = Field(
        description="one per minute, oldest first; the last is the minute in progress"
    )


def _store(context: Annotated[ApiContext, Depends(get_context)]) -> OutboxStore:
    return context.store


Store = Annotated[OutboxStore, Depends(_store)]


def ops_router() -> APIRouter:
    """The `/v1/ops` routes. Without a token, with an unknown or revoked one, and with a
    participant token alike the answer is 401 `unauthorized` (`require_operator`: one answer
    for "these credentials do not open this door")."""
    router = APIRouter(
        prefix="/v1/ops",
        tags=["operations"],
        dependencies=[Depends(require_operator)],
        responses={401: {"model": ErrorBody, "description": "no operator token"}},
    )

    @router.get("/status", summary="Queue counts by state (the supervisor view)")
    async def status(store: Store) -> OpsStatus:
        s = await store.status(Role.READONLY)
        fleet = await OperatorStore(store.db).fleet(Role.READONLY)
        age = (
            max(0.0, (s.observed_at - s.oldest_pending_at).total_seconds())
            if s.oldest_pending_at is not None
            else None
        )
        return OpsStatus(
            due=s.due,
            scheduled=s.scheduled,
            dispatching=s.dispatching,
            zombies=s.zombies,
            awaiting_lookup=s.awaiting_lookup,
            under_review=s.under_review,
            pending_total=s.pending_total,
            dispatched_total=s.dispatched_total,
            failed_total=s.failed_total,
            oldest_pending_at=s.oldest_pending_at,
            oldest_pending_age_seconds=age,
            observed_at=s.observed_at,
            fleet=FleetSummary(**{k: v for k, v in fleet.as_dict().items()
                                  if k in FleetSummary.model_fields}),
        )

    @router.get(
        "/payments/{outbox_id}",
        summary="One item: registry entry, current state and full ledger",
        responses={404: {"model": ErrorBody, "description": "no item with this outbox id"}},
    )
    async def payment(outbox_id: UUID, store: Store) -> OpsItem:
        found = await store.item_with_ledger(outbox_id, Role.READONLY)
        if found is None:
            raise ApiError(404, "not_found", "no payment with this outbox id")
        summary, ledger = found
        terminal = summary["terminal_state"]
        state = terminal or ("DISPATCHING" if summary["lease_expires_at"] else "PENDING")
        actions = await OperatorStore(store.db).item_actions(outbox_id, Role.READONLY)
        return OpsItem(
            **{k: v for k, v in summary.items() if k in OpsItem.model_fields},
            state=state,
            ledger=[LedgerRow(**row) for row in ledger],
            actions=[OperatorAction(**row) for row in actions],
        )

    @router.get("/failures", summary="The newest FAILED items with their errors")
    async def failures(
        store: Store,
        limit: Annotated[int, Query(ge=1, le=MAX_FAILURES_LIMIT)] = DEFAULT_FAILURES_LIMIT,
    ) -> FailureList:
        rows = await store.recent_failures(limit, Role.READONLY)
        return FailureList(limit=limit, items=[Failure(**row) for row in rows])

    @router.get("/throughput", summary="Items that ended per minute, over the last N minutes")
    async def throughput(
        store: Store,
        minutes: Annotated[
            int, Query(ge=1, le=MAX_THROUGHPUT_MINUTES)
        ] = DEFAULT_THROUGHPUT_MINUTES,
    ) -> Throughput:
        rows = await store.throughput(minutes, Role.READONLY)
        return Throughput(minutes=minutes, buckets=[ThroughputBucket(**row) for row in rows])

    @router.post(
        "/payments/{outbox_id}/cancel",
        summary="Cancel a payment no attempt of which can have reached the rail",
        description="Needs an operator token of OPERATOR scope and a reason; recorded with "
        "the token in the operator actions and in the payment's ledger. Any participant's "
        "payment (a revoked participant's accepted payments go on unless an operator cancels "
        "them). 409 `payment_not_cancelable` with the current `state` otherwise.",
        responses={
            403: {"model": ErrorBody, "description": "the token may read but not act"},
            404: {"model": ErrorBody, "description": "no payment with this outbox id"},
            409: {"model": ErrorBody, "description": "not cancelable; `state` says why"},
            422: {"model": ErrorBody, "description": "no reason, or a malformed one"},
        },
        openapi_extra={"requestBody": {
            "required": True,
            "content": {"application/json": {"schema": OpsCancelRequest.model_json_schema()}},
        }},
    )
    async def cancel(
        request: Request,
        outbox_id: UUID,
        caller: Annotated[Caller, Depends(require_operator)],
        context: Annotated[ApiContext, Depends(get_context)],
    ) -> OpsCancelResult:
        body = await read_json(request)
        try:
            reason = OpsCancelRequest.model_validate(body).reason
        except ValidationError as exc:
            errors = [validation_field_error({**e, "loc": ("body", *e["loc"])})
                      for e in exc.errors(include_url=False, include_input=False)]
            raise ApiError(422, "invalid_request", "the request has invalid fields",
                           errors=errors) from None
        if not caller.may_act:
            raise ApiError(403, "insufficient_scope",
                           "this operator token may read but not act")
        try:
            result = await CancelStore(context.db).cancel_with_token(caller, outbox_id, reason)
        except NotFoundError:
            raise ApiError(404, "not_found", "no payment with this outbox id") from None
        except PermissionDeniedError:
            raise ApiError(403, "insufficient_scope",
                           "this operator token may read but not act") from None
        except InvalidRequestError as exc:
            raise ApiError(422, "invalid_request", "the request has invalid fields", errors=[
                FieldError(field="reason", code=exc.code, message=exc.message)]) from None
        if not result.canceled:
            raise ApiError(409, "payment_not_cancelable",
                           "the payment cannot be canceled: an attempt of it may have reached "
                           "the rail, or it has ended",
                           current={"state": result.state, "refusal": result.refusal})
        return OpsCancelResult(
            action_id=result.action_id, outbox_id=result.outbox_id,
            participant_id=result.participant_id, result=result.outcome.value,
            state=result.state, canceled_at=result.canceled_at)

    return router


class OpsCancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(description="why: 1-500 printable characters (recorded)")


class OpsCancelResult(BaseModel):
    action_id: int | None = Field(description="the operator action recorded")
    outbox_id: UUID
    participant_id: str | None
    result: str = Field(description="CANCELED, or ALREADY_CANCELED for a repeat")
    state: str
    canceled_at: datetime | None


def operator_routers(
    *, process_registries: Sequence[CollectorRegistry] = ()
) -> list[APIRouter]:
    """Everything the operator side adds to the app: `/v1/ops`, `/metrics` (with this
    process's own registries, e.g. the worker's in `symphony run`) and the dashboard at `/`."""
    return [
        ops_router(),
        operators_router(),
        metrics_router(process_registries=process_registries),
        dashboard_router(),
        webhook_health_router(),
        webhook_ops_router(),
    ]
