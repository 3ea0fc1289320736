"""Cancellation: a payment no attempt of which can have reached the rail may be canceled.

The rule and the work are the database's (migration `cancellation`, one transaction under the
pending row's lock): cancelable only while the payment was never dispatched, or every earlier
attempt ended in a clean refusal (nothing ambiguous, no lookup needed), and it is not leased
now. A cancel then appends a terminal CANCELED ledger row naming who asked and why, removes
the pending row and writes `payment.canceled`. Otherwise the answer is NOT_CANCELABLE with the
payment's current state (and why: DISPATCHING, UNDER_REVIEW, MAY_HAVE_REACHED_RAIL, TERMINAL),
and nothing is written. Canceling a canceled payment answers ALREADY_CANCELED.

Three doors, each its own role: the participant (the API, as ingest: only its own payments),
an operator on the command line (control, naming the operator), an operator token through
the API (symphony_operator: the database verifies the token). An unknown payment, or another
participant's, is PAYMENT_NOT_FOUND.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from symphony.db import Database, Role
from symphony.outbox.access import Caller


class CancelOutcome(StrEnum):
    CANCELED = "CANCELED"
    ALREADY_CANCELED = "ALREADY_CANCELED"
    NOT_CANCELABLE = "NOT_CANCELABLE"


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel came to. `state` is the payment's state now (CANCELED once canceled);
    `refusal` says why NOT_CANCELABLE."""

    outbox_id: UUID
    outcome: CancelOutcome
    state: str
    refusal: str | None
    attempt_no: int | None
    canceled_at: datetime | None
    participant_id: str | None = None
    action_id: int | None = None

    @property
    def canceled(self) -> bool:
        """The payment is canceled (now, or it was already)."""
        return self.outcome is not CancelOutcome.NOT_CANCELABLE

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "outbox_id": str(self.outbox_id), "result": self.outcome.value, "state": self.state,
            "refusal": self.refusal, "attempt_no": self.attempt_no,
            "canceled_at": None if self.canceled_at is None else self.canceled_at.isoformat(),
        }
        if self.participant_id is not None:
            out["participant_id"] = self.participant_id
        if self.action_id is not None:
            out["action_id"] = self.action_id
        return out


def _result(row: dict[str, Any]) -> CancelResult:
    attempt_no = row.get("attempt_no")
    action_id = row.get("action_id")
    return CancelResult(
        outbox_id=row["outbox_id"],
        outcome=CancelOutcome(row["result"]),
        state=str(row["state"]),
        refusal=row.get("refusal"),
        attempt_no=None if attempt_no is None else int(attempt_no),
        canceled_at=row.get("canceled_at"),
        participant_id=row.get("participant_id"),
        action_id=None if action_id is None else int(action_id),
    )


class CancelStore:
    """The three ways to cancel, each as its own role."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def cancel_as_participant(
        self, participant_id: str, outbox_id: UUID, reason: str | None = None
    ) -> CancelResult:
        """The participant's own payment (role: ingest); `reason` optional, 1-500 printable
        characters."""
        row = await self.db.fetch_one(Role.INGEST, "cancel_payment", {
            "participant_id": participant_id, "outbox_id": outbox_id, "reason": reason})
        assert row is not None  # the function answers one row or raises
        return _result(row)

    async def cancel_as_operator(
        self, outbox_id: UUID, *, canceled_by: str, reason: str
    ) -> CancelResult:
        """Any payment, by an operator named `canceled_by` (role: control); recorded in the
        operator actions."""
        row = await self.db.fetch_one(Role.CONTROL, "cancel_payment_by_operator", {
            "outbox_id": outbox_id, "canceled_by": canceled_by, "reason": reason})
        assert row is not None
        return _result(row)

    async def cancel_with_token(
        self, actor: Caller, outbox_id: UUID, reason: str
    ) -> CancelResult:
        """Any payment, by the operator token `actor` (role: operator; the database verifies
        the token and its OPERATOR scope); recorded in the operator actions."""
        row = await self.db.fetch_one(Role.OPERATOR, "ops_cancel_payment", {
            "token_id": actor.token_id, "secret_hash": actor.credential,
            "outbox_id": outbox_id, "reason": reason})
        assert row is not None
        return _result(row)
