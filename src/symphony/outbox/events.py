"""Payment events: what happened to a participant's payments, in the order it committed.

The database writes them (migration `payment_events`): each in the same transaction as the
row that causes it, numbered per participant without gaps in commit order, append-only. An
event's `payload` is the payment as `GET /v1/payments/{id}` showed it at that moment: the
columns of `participant_payment` and, under `attempts`, the rows of
`participant_payment_attempts`. `payment_of` turns it back into the same value types the API
renders a payment from, so an event's payment and a GET's are rendered by one code path.

Public event ids are `evt_` and the event's uuid as 32 lowercase hex digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from symphony.db import Database, Role
from symphony.outbox.model import ParticipantPayment, PaymentAttempt

EVENT_ID_PREFIX: Final = "evt_"
# Most events one read returns (the database function's own bound).
MAX_EVENTS_PAGE: Final = 200


class EventType(StrEnum):
    CREATED = "payment.created"
    DISPATCHED = "payment.dispatched"
    FAILED = "payment.failed"
    CANCELED = "payment.canceled"
    UNDER_REVIEW = "payment.under_review"


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """One event of a participant. `payload` is the payment as stored (see `payment_of`)."""

    event_seq: int
    event_id: UUID
    event_type: str
    outbox_id: UUID
    payload: dict[str, Any]
    created_at: datetime

    @property
    def public_id(self) -> str:
        return public_event_id(self.event_id)


def public_event_id(event_id: UUID) -> str:
    """`evt_<32 hex>`: the id a participant (and a webhook's `webhook-id`) sees."""
    return f"{EVENT_ID_PREFIX}{event_id.hex}"


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value))
    return parsed.astimezone(UTC)


def payment_of(payload: dict[str, Any]) -> tuple[ParticipantPayment, list[PaymentAttempt]]:
    """The payment and its attempts an event carries, as `OutboxStore.payment_for` and
    `attempts_for` return them."""
    created_at = _time(payload["created_at"])
    updated_at = _time(payload["updated_at"])
    assert created_at is not None and updated_at is not None  # NOT NULL in the view
    payment = ParticipantPayment(
        outbox_id=UUID(str(payload["outbox_id"])),
        instruction_id=str(payload["instruction_id"]),
        idempotency_key=str(payload["idempotency_key"]),
        rail_type=str(payload["rail_type"]),
        payload=dict(payload["payload"]),
        state=str(payload["state"]),
        attempt_count=int(payload["attempt_count"]),
        next_attempt_at=_time(payload.get("next_attempt_at")),
        last_error_code=payload.get("last_error_code"),
        created_at=created_at,
        updated_at=updated_at,
        terminal_at=_time(payload.get("terminal_at")),
    )
    attempts = []
    for a in payload.get("attempts") or []:
        recorded_at = _time(a["recorded_at"])
        assert recorded_at is not None
        attempts.append(PaymentAttempt(
            attempt_no=int(a["attempt_no"]),
            state=str(a["state"]),
            error_code=a.get("error_code"),
            error_detail=a.get("error_detail"),
            rail_transaction_id=a.get("rail_transaction_id"),
            recorded_at=recorded_at,
        ))
    return payment, attempts


class EventStore:
    """A participant's events, read through the participant-scoped function (readonly)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def events_for(
        self,
        participant_id: str,
        *,
        after: int = 0,
        limit: int = 50,
        event_type: str | None = None,
    ) -> list[PaymentEvent]:
        """Events with event_seq > `after`, oldest first; `limit` 1-200
        (INVALID_BATCH_SIZE), `after` >= 0 (INVALID_EVENT_CURSOR), `event_type` one of
        `EventType` (INVALID_EVENT_TYPE)."""
        rows = await self.db.fetch_all(
            Role.READONLY, "participant_events",
            {"participant_id": participant_id, "after": after, "limit": limit,
             "event_type": event_type},
        )
        return [
            PaymentEvent(
                event_seq=int(r["event_seq"]),
                event_id=r["event_id"],
                event_type=str(r["event_type"]),
                outbox_id=r["outbox_id"],
                payload=dict(r["payload"]),
                created_at=r["created_at"],
            )
            for r in rows
        ]
