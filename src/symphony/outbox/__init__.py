"""The outbox domain: payment instructions, leased items, outcomes, and the store that moves
them through the database functions (enqueue, claim, complete, repair)."""

from __future__ import annotations

from symphony.outbox.model import (
    ClaimedItem,
    Completion,
    CompletionResult,
    EnqueueResult,
    Outcome,
    PaymentInstruction,
    RepairedItem,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    SupervisorStatus,
)
from symphony.outbox.store import OutboxStore

__all__ = [
    "ClaimedItem",
    "Completion",
    "CompletionResult",
    "EnqueueResult",
    "OutboxStore",
    "Outcome",
    "PaymentInstruction",
    "RepairedItem",
    "ReviewDecision",
    "ReviewItem",
    "ReviewOutcome",
    "SupervisorStatus",
]
