"""Value types of the outbox. The database validates everything again; these exist so code
outside it is typed, and so obvious mistakes fail before a round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID


class Outcome(StrEnum):
    """What a dispatch attempt ended in, as recorded by `complete_outbox_attempt`."""

    DISPATCHED = "DISPATCHED"
    RETRYABLE = "RETRYABLE"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class PaymentInstruction:
    """One payment a participant asks for. `payload` holds amount, currency, destination."""

    instruction_id: str
    idempotency_key: str
    participant_id: str
    rail_type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    outbox_id: UUID
    sequence_id: int
    state: str
    created: bool
    # When the item was first registered: the same on every replay.
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentAttempt:
    """One ledger row of a payment, as its participant may see it (no worker, no lease)."""

    attempt_no: int
    state: str
    error_code: str | None
    error_detail: str | None
    rail_transaction_id: str | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ParticipantPayment:
    """A payment as its participant sees it.

    `state` is the logical state: DISPATCHED or FAILED once terminal, DISPATCHING while
    leased, RETRYABLE while waiting out a backoff, PENDING otherwise.
    """

    outbox_id: UUID
    instruction_id: str
    idempotency_key: str
    rail_type: str
    payload: dict[str, Any]
    state: str
    attempt_count: int
    next_attempt_at: datetime | None
    last_error_code: str | None
    created_at: datetime
    updated_at: datetime
    terminal_at: datetime | None


# Routing buckets (migration "distribution_keys"): a participant's items are all in one
# bucket, the top 8 bits of hashtext(participant_id), stored on the row by the database.
BUCKET_COUNT: Final = 256


@dataclass(frozen=True, slots=True)
class BucketRange:
    """An inclusive range of routing buckets, `first`-`last` within 0-255.

    A worker given a range claims, completes and repairs only items of participants whose
    bucket lies in it; a fleet whose ranges cover 0-255 without overlap covers every item.
    """

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last <= BUCKET_COUNT - 1:
            raise ValueError(
                f"a bucket range is FROM-TO with 0 <= FROM <= TO <= {BUCKET_COUNT - 1}, "
                f"got {self.first}-{self.last}"
            )

    @classmethod
    def parse(cls, text: str) -> BucketRange:
        """`FROM-TO` (`"0-63"`) or a single bucket (`"7"`); a ValueError otherwise."""
        first, sep, last = text.strip().partition("-")
        if not first.strip().isdigit() or (sep and not last.strip().isdigit()):
            raise ValueError(f"a bucket range is FROM-TO (such as 0-63), got {text!r}")
        low = int(first)
        return cls(low, int(last) if sep else low)

    @classmethod
    def all(cls) -> BucketRange:
        return cls(0, BUCKET_COUNT - 1)

    def __contains__(self, bucket: object) -> bool:
        return isinstance(bucket, int) and self.first <= bucket <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """An item leased to one worker: only the holder of `lease_token` may complete it."""

    outbox_id: UUID
    lease_token: UUID
    lease_expires_at: datetime
    attempt_no: int
    attempt_count: int
    needs_lookup: bool
    participant_id: str
    sequence_id: int
    instruction_id: str
    rail_type: str
    payload: dict[str, Any]

    @property
    def reference(self) -> str:
        """The one stable reference the rail sees for this item, on every attempt (I10)."""
        return str(self.outbox_id)


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one dispatch, reported under the lease that dispatched it."""

    outbox_id: UUID
    lease_token: UUID
    outcome: Outcome
    error_code: str | None = None
    error_detail: str | None = None
    ambiguous: bool = False
    rail_transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class CompletionResult:
    outbox_id: UUID
    fenced: bool
    state: str | None
    attempt_no: int | None
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class RepairedItem:
    outbox_id: UUID
    attempt_no: int
    attempt_count: int
    claimed_by: str
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class SupervisorStatus:
    due: int
    scheduled: int
    dispatching: int
    zombies: int
    # Items whose last attempt may have executed: the rail is asked before any re-send.
    awaiting_lookup: int
    # Items that may have been executed and that the rail did not settle within the retry
    # ceiling: no worker touches them until an operator records the rail's outcome.
    under_review: int
    pending_total: int
    oldest_pending_at: datetime | None
    dispatched_total: int
    failed_total: int
    observed_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "due": self.due,
            "scheduled": self.scheduled,
            "dispatching": self.dispatching,
            "zombies": self.zombies,
            "awaiting_lookup": self.awaiting_lookup,
            "under_review": self.under_review,
            "pending_total": self.pending_total,
            "oldest_pending_at": (
                self.oldest_pending_at.isoformat() if self.oldest_pending_at else None
            ),
            "dispatched_total": self.dispatched_total,
            "failed_total": self.failed_total,
            "observed_at": self.observed_at.isoformat(),
        }


class ReviewDecision(StrEnum):
    """What an operator records for an item under review, from the rail's own records."""

    DISPATCHED = "DISPATCHED"
    FAILED = "FAILED"
    RETRY = "RETRY"


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """An item under review: it may have been executed, and the rail has not said."""

    outbox_id: UUID
    participant_id: str
    instruction_id: str
    rail_type: str
    review_reason: str
    review_since: datetime
    attempt_count: int
    last_error_code: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "outbox_id": str(self.outbox_id),
            "participant_id": self.participant_id,
            "instruction_id": self.instruction_id,
            "rail_type": self.rail_type,
            "review_reason": self.review_reason,
            "review_since": self.review_since.isoformat(),
            "attempt_count": self.attempt_count,
            "last_error_code": self.last_error_code,
        }


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    outbox_id: UUID
    decision: ReviewDecision
    state: str
    attempt_no: int
