"""The participant API: submit a payment, read one, list them.

    POST /v1/payments              Idempotency-Key header, JSON body -> 201 (created) / 200 (replay)
    GET  /v1/payments/{outbox_id}  the payment with its state and attempts
    GET  /v1/payments              the caller's payments, newest first, by cursor
    POST /v1/payments/{id}/cancel  cancel it while no attempt can have reached the rail

Every route needs a participant token, and the participant is the token's, never the body's:
a participant sees and submits only its own payments, and another participant's outbox id is
404, exactly like an id that does not exist (no 403 that would confirm it exists).

Validation is split on purpose. Pydantic checks only the shape (required fields, types,
`amount` a JSON string, no unknown fields); the values are judged by the database's enqueue
function, whose refusals (SY011-SY019) come back as field errors with the database's own
codes, so the API and the database can never disagree about what a valid payment is.

The POST body holds only what is fixed when the payment is created (ids, key, rail, amount,
currency, destination, metadata, created_at), read back from the database: a replay answers
byte for byte what the first request got. The state is not in it (it changes); follow
`links.self`, also given as the `Location` header.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from symphony.db import (
    IdempotencyConflictError,
    InvalidRequestError,
    NotFoundError,
    SymphonyError,
)
from symphony.outbox import PaymentInstruction
from symphony.outbox.access import Caller
from symphony.outbox.cancel import CancelStore
from symphony.outbox.model import ParticipantPayment, PaymentAttempt
from symphony.services.api.auth import refused_token, require_participant
from symphony.services.api.body import read_json
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.error import ApiError, ErrorBody, FieldError, validation_field_error

PREFIX: Final = "/v1/payments"
MAX_PAGE: Final = 100
DEFAULT_PAGE: Final = 50
# Printable ASCII without space, '"', ',' and '\\': nothing a proxy could split, fold or
# unescape, and exactly what the database accepts as a key (1-255 printable characters).
_IDEMPOTENCY_KEY: Final = re.compile(r'[!#-+\--\[\]-~]{1,255}')
# Payment data is the participant's: no shared cache may keep it.
_NO_STORE: Final = {"Cache-Control": "no-store"}

# The enqueue function's refusals, by public code (see symphony.db.error), to the field of
# the request they are about.
_FIELD_OF_CODE: Final[dict[str, str | None]] = {
    "INVALID_INSTRUCTION_ID": "instruction_id",
    "UNKNOWN_RAIL_TYPE": "rail_type",
    "INVALID_AMOUNT": "amount",
    "INVALID_CURRENCY": "currency",
    "INVALID_DESTINATION": "destination",
    "INVALID_METADATA": "metadata",
    "PAYLOAD_TOO_LARGE": "metadata",
    "PAYLOAD_TOO_COMPLEX": "metadata",
    "INVALID_CURSOR": "after",
    "INVALID_STATE_FILTER": "state",
    "INVALID_BATCH_SIZE": "limit",
    "INVALID_PAYLOAD": None,
    "INVALID_CHARACTER": None,
    "INVALID_DATA": None,
}
_UNAUTHORIZED_CODES: Final = frozenset({"PARTICIPANT_NOT_ACTIVE", "INVALID_PARTICIPANT_ID"})


class PaymentState(StrEnum):
    PENDING = "PENDING"
    DISPATCHING = "DISPATCHING"
    RETRYABLE = "RETRYABLE"
    DISPATCHED = "DISPATCHED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class CancelRequest(BaseModel):
    """Why the payment is canceled (optional); kept in its history."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str | None = Field(default=None, description="1-500 printable characters")


class PaymentRequest(BaseModel):
    """A payment instruction. The participant is the token's; values are checked by the
    database (amount positive with at most 8 decimals, a 3-letter currency, ...)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{
            "instruction_id": "inv-2024-0001",
            "rail_type": "SEPA_CT",
            "amount": "12.50",
            "currency": "EUR",
            "destination": "DE89370400440532013000",
            "metadata": {"invoice": "2024-0001"},
        }]},
    )

    instruction_id: str = Field(description="your id of this payment (letters, digits, .:_-)")
    rail_type: str = Field(description="payment rail, e.g. SEPA_CT, RTP, ACH, FPS")
    amount: str = Field(description='decimal string, e.g. "12.50"; a JSON number is refused')
    currency: str = Field(description="ISO 4217 code, e.g. EUR")
    destination: str = Field(description="destination account")
    metadata: dict[str, Any] | None = Field(default=None, description="your own data, echoed")


class Links(BaseModel):
    self: str


class PaymentCreated(BaseModel):
    """What a POST answers: only what was fixed when the payment was created."""

    outbox_id: UUID
    instruction_id: str
    idempotency_key: str
    rail_type: str
    amount: str
    currency: str
    destination: str
    metadata: dict[str, Any] | None
    created_at: datetime
    links: Links


class Attempt(BaseModel):
    attempt_no: int
    state: str
    error_code: str | None
    error_detail: str | None
    rail_transaction_id: str | None
    recorded_at: datetime


class Payment(BaseModel):
    outbox_id: UUID
    instruction_id: str
    idempotency_key: str
    rail_type: str
    amount: str
    currency: str
    destination: str
    metadata: dict[str, Any] | None
    state: PaymentState
    attempt_count: int
    next_attempt_at: datetime | None
    last_error_code: str | None
    created_at: datetime
    updated_at: datetime | None
    terminal_at: datetime | None


class PaymentDetail(Payment):
    attempts: list[Attempt]


class PaymentPage(BaseModel):
    data: list[Payment]
    has_more: bool
    next_after: UUID | None = Field(description="pass as `after` for the next page")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


router = APIRouter(prefix=PREFIX, tags=["payments"])
CallerDep = Annotated[Caller, Depends(require_participant)]
ContextDep = Annotated[ApiContext, Depends(get_context)]


@router.post(
    "",
    status_code=201,
    summary="submit a payment (idempotent by the Idempotency-Key header)",
    response_model=PaymentCreated,
    responses={
        200: {"model": PaymentCreated, "description": "a replay: the payment already exists"},
        **_errors(400, 401, 408, 413, 415, 422, 503),
    },
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PaymentRequest.model_json_schema()}},
    }},
)
async def create_payment(
    request: Request,
    caller: CallerDep,
    context: ContextDep,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key",
        description="required: 1-255 printable ASCII characters (no space, quote, comma or "
        "backslash), e.g. a UUID; a plain or a quoted (structured-field) string",
    )] = None,
) -> JSONResponse:
    _require_json(request)
    key = _idempotency_key(request)
    body = await read_json(request)
    payment = _validated(body)
    payload: dict[str, Any] = {
        "amount": payment.amount, "currency": payment.currency,
        "destination": payment.destination,
    }
    if payment.metadata is not None:
        payload["metadata"] = payment.metadata
    participant_id = _participant(caller)
    instruction = PaymentInstruction(
        instruction_id=payment.instruction_id,
        idempotency_key=key,
        participant_id=participant_id,
        rail_type=payment.rail_type,
        payload=payload,
    )
    try:
        result = await context.store.enqueue(instruction)
    except IdempotencyConflictError:
        raise ApiError(422, "idempotency_key_reused",
                       "the Idempotency-Key was already used with a different request") from None
    except InvalidRequestError as exc:
        raise _refusal(exc) from None
    except SymphonyError as exc:
        if exc.code in _UNAUTHORIZED_CODES:
            raise _inactive() from None
        raise
    request.state.outbox_id = str(result.outbox_id)
    stored = await context.store.payment_for(participant_id, result.outbox_id)
    if stored is None:  # it was just written under this participant
        raise ApiError(500, "internal_error", "the payment was stored but cannot be read back")
    created = PaymentCreated(
        outbox_id=stored.outbox_id,
        instruction_id=stored.instruction_id,
        idempotency_key=stored.idempotency_key,
        rail_type=stored.rail_type,
        amount=str(stored.payload.get("amount")),
        currency=str(stored.payload.get("currency")),
        destination=str(stored.payload.get("destination")),
        metadata=_metadata(stored.payload),
        created_at=stored.created_at,
        links=Links(self=f"{PREFIX}/{stored.outbox_id}"),
    )
    headers = {"Location": created.links.self, **_NO_STORE}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(created.model_dump(mode="json"),
                        status_code=201 if result.created else 200, headers=headers)


@router.get(
    "/{outbox_id}",
    summary="one of your payments, with its state and attempts",
    response_model=PaymentDetail,
    responses=_errors(401, 404, 503),
)
async def get_payment(
    request: Request, outbox_id: str, caller: CallerDep, context: ContextDep
) -> JSONResponse:
    participant_id = _participant(caller)
    try:
        wanted = UUID(outbox_id)
    except ValueError:
        raise _not_found() from None
    payment = await context.store.payment_for(participant_id, wanted)
    if payment is None:
        raise _not_found()
    request.state.outbox_id = str(wanted)
    attempts = await context.store.attempts_for(participant_id, wanted)
    detail = payment_detail(payment, attempts)
    return JSONResponse(detail.model_dump(mode="json"), headers=_NO_STORE)


@router.get(
    "",
    summary="your payments, newest first, by cursor",
    response_model=PaymentPage,
    responses=_errors(401, 422, 503),
)
async def list_payments(
    caller: CallerDep,
    context: ContextDep,
    state: Annotated[PaymentState | None, Query(description="only payments in this state")] = None,
    after: Annotated[UUID | None, Query(description="the `next_after` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")] = DEFAULT_PAGE,
) -> JSONResponse:
    participant_id = _participant(caller)
    try:
        rows = await context.store.payments_for(
            participant_id, state=state.value if state else None, after=after, limit=limit + 1
        )
    except InvalidRequestError as exc:
        # An `after` that is not one of the caller's payments: refused alike whether it is
        # someone else's or nobody's.
        raise _refusal(exc) from None
    has_more = len(rows) > limit
    page = rows[:limit]
    result = PaymentPage(
        data=[_payment(p) for p in page],
        has_more=has_more,
        next_after=page[-1].outbox_id if has_more and page else None,
    )
    return JSONResponse(result.model_dump(mode="json"), headers=_NO_STORE)


@router.post(
    "/{outbox_id}/cancel",
    summary="cancel one of your payments while no attempt of it can have reached the rail",
    description="Cancelable while the payment was never dispatched, or every earlier attempt "
    "was a clean refusal (nothing ambiguous), and it is not being dispatched now. Answers the "
    "canceled payment; canceling it again answers the same. Otherwise 409 "
    "`payment_not_cancelable` with the payment's current `state`. The body is optional: "
    '`{"reason": "..."}`.',
    response_model=PaymentDetail,
    responses=_errors(400, 401, 404, 409, 415, 422, 503),
    openapi_extra={"requestBody": {
        "required": False,
        "content": {"application/json": {"schema": CancelRequest.model_json_schema()}},
    }},
)
async def cancel_payment(
    request: Request, outbox_id: str, caller: CallerDep, context: ContextDep
) -> JSONResponse:
    participant_id = _participant(caller)
    try:
        wanted = UUID(outbox_id)
    except ValueError:
        raise _not_found() from None
    reason = await _cancel_reason(request)
    request.state.outbox_id = str(wanted)
    try:
        result = await CancelStore(context.db).cancel_as_participant(
            participant_id, wanted, reason)
    except NotFoundError:
        raise _not_found() from None
    except InvalidRequestError as exc:
        raise ApiError(422, "invalid_request", "the request has invalid fields", errors=[
            FieldError(field="reason", code=exc.code, message=exc.message)]) from None
    if not result.canceled:
        raise ApiError(409, "payment_not_cancelable",
                       "the payment cannot be canceled: an attempt of it may have reached the "
                       "rail, or it has ended", current={"state": result.state})
    payment = await context.store.payment_for(participant_id, wanted)
    if payment is None:  # canceled just now, under this participant
        raise ApiError(500, "internal_error", "the payment was canceled but cannot be read back")
    attempts = await context.store.attempts_for(participant_id, wanted)
    return JSONResponse(payment_detail(payment, attempts).model_dump(mode="json"),
                        headers=_NO_STORE)


async def _cancel_reason(request: Request) -> str | None:
    """The optional `reason` of a cancel's body; no body (or an empty one) is no reason."""
    raw = await request.body()
    if not raw.strip():
        return None
    _require_json(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the request has invalid fields", errors=[
            FieldError(field=None, code="INVALID_BODY", message="the body must be a JSON object")
        ])
    try:
        return CancelRequest.model_validate(body).reason
    except ValidationError as exc:
        errors = [validation_field_error({**e, "loc": ("body", *e["loc"])})
                  for e in exc.errors(include_url=False, include_input=False)]
        raise ApiError(422, "invalid_request", "the request has invalid fields",
                       errors=errors) from None


# -- request checks ----------------------------------------------------------------------


def _participant(caller: Caller) -> str:
    if not caller.participant_id:  # require_participant guarantees it
        raise _inactive()
    return caller.participant_id


def _require_json(request: Request) -> None:
    raw = request.headers.get("content-type", "")
    media, _, params = raw.partition(";")
    if media.strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "the request body must be sent as Content-Type: application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8", "utf8"
        ):
            raise ApiError(415, "unsupported_media_type", "the request body must be UTF-8 JSON")


def _idempotency_key(request: Request) -> str:
    values = request.headers.getlist("idempotency-key")
    if not values:
        raise ApiError(400, "idempotency_key_missing",
                       "the Idempotency-Key header is required (e.g. a fresh UUID per payment)")
    if len(values) > 1:
        raise ApiError(400, "idempotency_key_invalid", "send exactly one Idempotency-Key header")
    key = values[0].strip()
    # RFC 9651 sf-string form ("..."), as the IETF Idempotency-Key draft writes it.
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(400, "idempotency_key_invalid",
                       "the Idempotency-Key must be 1-255 printable ASCII characters without "
                       "space, quote, comma or backslash")
    return key


def _validated(body: Any) -> PaymentRequest:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the request has invalid fields", errors=[
            FieldError(field=None, code="INVALID_BODY", message="the body must be a JSON object")
        ])
    try:
        return PaymentRequest.model_validate(body)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False, include_input=False):
            problem = validation_field_error({**error, "loc": ("body", *error["loc"])})
            if problem.field == "amount" and problem.code == "INVALID_TYPE":
                problem = FieldError(field="amount", code="INVALID_AMOUNT", message=(
                    'amount must be a JSON string holding a decimal, e.g. "12.50" (a JSON '
                    "number would be rounded by some readers)"))
            errors.append(problem)
        raise ApiError(422, "invalid_request", "the request has invalid fields",
                       errors=errors) from None


def _refusal(exc: InvalidRequestError) -> ApiError:
    """The database refused a value: its code, on the field it is about."""
    if exc.code == "INVALID_IDEMPOTENCY_KEY":
        return ApiError(400, "idempotency_key_invalid", exc.message)
    if exc.code in _UNAUTHORIZED_CODES:
        return _inactive()
    return ApiError(422, "invalid_request", "the request has invalid fields", errors=[
        FieldError(field=_FIELD_OF_CODE.get(exc.code), code=exc.code, message=exc.message)
    ])


def _inactive() -> ApiError:
    # A participant revoked while its token was cached (or between authentication and the
    # enqueue): answered exactly like an unknown token.
    return refused_token()


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such payment")


# -- responses ---------------------------------------------------------------------------


def payment_detail(payment: ParticipantPayment, attempts: list[PaymentAttempt]) -> PaymentDetail:
    """A payment as `GET /v1/payments/{id}` shows it (the events carry the same)."""
    return PaymentDetail(**_payment(payment).model_dump(), attempts=[_attempt(a) for a in attempts])


def _payment(p: ParticipantPayment) -> Payment:
    return Payment(
        outbox_id=p.outbox_id,
        instruction_id=p.instruction_id,
        idempotency_key=p.idempotency_key,
        rail_type=p.rail_type,
        amount=str(p.payload.get("amount")),
        currency=str(p.payload.get("currency")),
        destination=str(p.payload.get("destination")),
        metadata=_metadata(p.payload),
        state=PaymentState(p.state),
        attempt_count=p.attempt_count,
        next_attempt_at=p.next_attempt_at,
        last_error_code=p.last_error_code,
        created_at=p.created_at,
        updated_at=p.updated_at,
        terminal_at=p.terminal_at,
    )


def _metadata(payload: dict[str, Any]) -> dict[str, Any] | None:
    # Payments enqueued by other means (the CLI's --payload) may carry anything here; the API
    # shows an object or nothing rather than fail on someone else's shape.
    value = payload.get("metadata")
    return value if isinstance(value, dict) else None


def _attempt(a: PaymentAttempt) -> Attempt:
    return Attempt(
        attempt_no=a.attempt_no,
        state=a.state,
        error_code=a.error_code,
        error_detail=a.error_detail,
        rail_transaction_id=a.rail_transaction_id,
        recorded_at=a.recorded_at,
    )
