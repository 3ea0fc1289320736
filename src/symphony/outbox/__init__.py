"""The outbox domain: payment instructions, leased items, outcomes, and the store that moves
them through the database functions (enqueue, claim, complete, repair), with the API's group
commit of enqueues (`ingest`) and the check that an instruction can be stored (`storable`);
participants and their API tokens (`AccessStore`); the participants' events (`EventStore`);
the operators' browse, fleet and actions (`OperatorStore`); the auditor's checks and ledger
checkpoints (`AuditStore`, `verify`)."""

from __future__ import annotations

from symphony.outbox.access import (
    AccessStore,
    Caller,
    IssuedToken,
    Participant,
    TokenKind,
    TokenScope,
)
from symphony.outbox.audit import (
    AuditReport,
    AuditStore,
    Checkpoint,
    CheckResult,
    Violation,
    verify,
)
from symphony.outbox.model import (
    BUCKET_COUNT,
    BucketRange,
    ClaimedItem,
    Completion,
    CompletionResult,
    EnqueueResult,
    Outcome,
    ParticipantPayment,
    PaymentAttempt,
    PaymentInstruction,
    RepairedItem,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    SupervisorStatus,
)
from symphony.outbox.store import OutboxStore

__all__ = [
    "BUCKET_COUNT",
    "AccessStore",
    "AuditReport",
    "AuditStore",
    "BucketRange",
    "Caller",
    "CheckResult",
    "Checkpoint",
    "ClaimedItem",
    "Completion",
    "CompletionResult",
    "EnqueueResult",
    "IssuedToken",
    "OutboxStore",
    "Outcome",
    "Participant",
    "ParticipantPayment",
    "PaymentAttempt",
    "PaymentInstruction",
    "RepairedItem",
    "ReviewDecision",
    "ReviewItem",
    "ReviewOutcome",
    "SupervisorStatus",
    "TokenKind",
    "TokenScope",
    "Violation",
    "verify",
]
