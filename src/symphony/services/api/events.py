"""The participant's event feed.

    GET /v1/events?after=&limit=&type=   the caller's events, oldest first, by cursor

Events are written by the database in the same transaction as the change they report and
numbered per participant in commit order (`sequence`), so a client that polls with
`after=<the last sequence it processed>` sees every event exactly once and in order: an event
with a lower number can never appear after one with a higher number was returned.

An event's body (`event_body`) is also what a webhook delivers: `id` (`evt_<32 hex>`, stable),
`type`, `sequence`, `created_at` and `data.object`, the payment exactly as
`GET /v1/payments/{id}` showed it when the event was written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from symphony.db import InvalidRequestError
from symphony.outbox.access import Caller
from symphony.outbox.events import EventStore, EventType, PaymentEvent, payment_of
from symphony.services.api.auth import require_participant
from symphony.services.api.context import ApiContext, get_context
from symphony.services.api.error import ApiError, ErrorBody, FieldError
from symphony.services.api.participant import PaymentDetail, payment_detail

PREFIX: Final = "/v1/events"
MAX_PAGE: Final = 100
DEFAULT_PAGE: Final = 50
_NO_STORE: Final = {"Cache-Control": "no-store"}


class EventData(BaseModel):
    object: PaymentDetail = Field(description="the payment as GET /v1/payments/{id} showed it "
                                  "when the event was written")


class Event(BaseModel):
    id: str = Field(description="stable event id, evt_<32 hex>; a webhook's webhook-id")
    type: EventType
    sequence: int = Field(description="per participant, from 1, without gaps, in commit order")
    created_at: datetime
    data: EventData


class EventPage(BaseModel):
    data: list[Event]
    has_more: bool
    next_after: int = Field(description="pass as `after` for the next page (or the next poll)")


def event_model(event: PaymentEvent) -> Event:
    payment, attempts = payment_of(event.payload)
    return Event(
        id=event.public_id,
        type=EventType(event.event_type),
        sequence=event.event_seq,
        created_at=event.created_at,
        data=EventData(object=payment_detail(payment, attempts)),
    )


def event_body(event: PaymentEvent) -> dict[str, Any]:
    """The event as JSON-ready data: what `GET /v1/events` lists and a webhook delivers."""
    return event_model(event).model_dump(mode="json")


router = APIRouter(prefix=PREFIX, tags=["events"])
CallerDep = Annotated[Caller, Depends(require_participant)]
ContextDep = Annotated[ApiContext, Depends(get_context)]


@router.get(
    "",
    summary="your events, oldest first, by cursor (poll with the last `next_after`)",
    response_model=EventPage,
    responses={status: {"model": ErrorBody} for status in (401, 422, 503)},
)
async def list_events(
    caller: CallerDep,
    context: ContextDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="the `next_after` of the previous "
                                "page; 0 (the default) starts at the first event")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")] = DEFAULT_PAGE,
    event_type: Annotated[EventType | None, Query(
        alias="type", description="only events of this type")] = None,
) -> JSONResponse:
    participant_id = caller.participant_id
    if not participant_id:  # require_participant guarantees it
        raise ApiError(401, "unauthorized", "this endpoint needs a participant token")
    try:
        rows = await EventStore(context.db).events_for(
            participant_id, after=after, limit=limit + 1,
            event_type=event_type.value if event_type else None,
        )
    except InvalidRequestError as exc:
        raise ApiError(422, "invalid_request", "the request has invalid fields", errors=[
            FieldError(field=None, code=exc.code, message=exc.message)
        ]) from None
    has_more = len(rows) > limit
    page = rows[:limit]
    result = EventPage(
        data=[event_model(e) for e in page],
        has_more=has_more,
        next_after=page[-1].event_seq if page else after,
    )
    return JSONResponse(result.model_dump(mode="json"), headers=_NO_STORE)
