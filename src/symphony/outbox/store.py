"""The outbox's operations, each one named query through `symphony.db` as the right role.

Claim, complete and repair take and return whole batches: one statement per batch, so the
per-item cost is rows written, not round trips.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from symphony.db import (
    Database,
    DatabaseUnavailableError,
    InvalidRequestError,
    Role,
    SymphonyError,
    refusal,
)
from symphony.outbox.ingest import EnqueueGroup
from symphony.outbox.model import (
    BucketRange,
    ClaimedItem,
    Completion,
    CompletionResult,
    EnqueueResult,
    ParticipantPayment,
    PaymentAttempt,
    PaymentInstruction,
    RepairedItem,
    ReviewDecision,
    ReviewItem,
    ReviewOutcome,
    SupervisorStatus,
)
from symphony.outbox.storable import check_storable

# Most instructions one batch statement carries (the function's own bound).
MAX_ENQUEUE_BATCH = 1000
# Bounds of the operator's read queries: each answer is a bounded amount of work.
MAX_FAILURES_LIMIT = 500
MAX_THROUGHPUT_MINUTES = 240


class OutboxStore:
    """Typed access to the outbox functions and views."""

    def __init__(self, db: Database, *, group_commit: bool = False) -> None:
        self.db = db
        self._group = EnqueueGroup(self) if group_commit else None

    async def enqueue(self, instruction: PaymentInstruction) -> EnqueueResult:
        """Idempotent for ever on (participant_id, instruction_id, idempotency_key) — I1.

        Answers only once the item is committed. With `group_commit`, calls that arrive while
        an earlier group commits are gathered into one batch transaction (see
        `symphony.outbox.ingest`); each caller still gets its own result or its own error.
        """
        if self._group is not None:
            return await self._group.submit(instruction)
        return await self.enqueue_one(instruction)

    async def enqueue_one(
        self, instruction: PaymentInstruction, *, body: str | None = None
    ) -> EnqueueResult:
        """One instruction in its own transaction (`enqueue_payment_outbox`). `body` is
        `payload_body(instruction)` when the caller already computed it (the group commit)."""
        row = await self.db.fetch_one(
            Role.INGEST,
            "enqueue_payment_outbox",
            {
                "instruction_id": instruction.instruction_id,
                "idempotency_key": instruction.idempotency_key,
                "participant_id": instruction.participant_id,
                "rail_type": instruction.rail_type,
                "payload": _payload_body(instruction) if body is None else body,
            },
        )
        assert row is not None  # the function always returns one row or raises
        return _enqueue_result(row)

    async def enqueue_batch(
        self, instructions: Sequence[PaymentInstruction], *, wake_after_commit: bool = False,
        bodies: Sequence[str] | None = None,
    ) -> list[EnqueueResult | SymphonyError]:
        """Many instructions in one transaction per 1,000 (`enqueue_payment_outbox_batch`), with
        the guarantees of `enqueue` for each. The answer is one entry per instruction, in
        order: its result, or the error `enqueue` would have raised for it alone. One refused
        item never fails the others; should the whole statement be refused (something the
        function does not report per item), every item is tried again on its own.

        `wake_after_commit=True` keeps the NOTIFY out of the batch's commit (where it would
        serialise the commits, see migration wake_after_commit): the caller then calls
        `wake_workers()` once this returned.

        `bodies`, when given, holds `payload_body()` of each instruction, computed by the
        caller (the group commit does so when a call joins it): each instruction is then
        checked and serialised once, not twice."""
        if bodies is not None and len(bodies) != len(instructions):
            raise ValueError("bodies must hold one payload body per instruction")
        results: list[EnqueueResult | SymphonyError | None] = [None] * len(instructions)
        for start in range(0, len(instructions), MAX_ENQUEUE_BATCH):
            chunk = range(start, min(start + MAX_ENQUEUE_BATCH, len(instructions)))
            await self._enqueue_chunk(instructions, chunk, results, wake_after_commit, bodies)
        return [r for r in results if r is not None]

    async def _enqueue_chunk(
        self,
        instructions: Sequence[PaymentInstruction],
        chunk: range,
        results: list[EnqueueResult | SymphonyError | None],
        wake_after_commit: bool,
        given: Sequence[str] | None,
    ) -> None:
        sent: list[int] = []
        bodies: list[str] = []
        for k in chunk:
            if given is not None:
                bodies.append(given[k])
                sent.append(k)
                continue
            try:
                bodies.append(_payload_body(instructions[k]))
            except SymphonyError as exc:
                results[k] = exc
                continue
            sent.append(k)
        if not sent:
            return
        try:
            rows = await self.db.fetch_all(
                Role.INGEST,
                "enqueue_payment_outbox_batch",
                {
                    "instruction_ids": [instructions[k].instruction_id for k in sent],
                    "idempotency_keys": [instructions[k].idempotency_key for k in sent],
                    "participant_ids": [instructions[k].participant_id for k in sent],
                    "rail_types": [instructions[k].rail_type for k in sent],
                    "payloads": bodies,
                    "wake_after_commit": wake_after_commit,
                },
            )
        except DatabaseUnavailableError as exc:
            for k in sent:
                results[k] = exc  # nothing was written; one by one would fare no better
            return
        except SymphonyError:
            # Refused as a whole (a character the server cannot store, say): each on its own,
            # so each caller gets its own answer.
            for k in sent:
                results[k] = await self.enqueue_or_error(instructions[k])
            return
        for row in rows:
            k = sent[int(row["item"]) - 1]
            sqlstate = row["error_sqlstate"]
            if sqlstate is None:
                results[k] = _enqueue_result(row)
                continue
            error = refusal(str(sqlstate), row["error_constraint"], "enqueue")
            # A refusal the mapping does not know: ask in the form that raises.
            results[k] = error if error is not None else await self.enqueue_or_error(
                instructions[k])

    async def enqueue_or_error(
        self, instruction: PaymentInstruction, *, body: str | None = None
    ) -> EnqueueResult | SymphonyError:
        """`enqueue_one`, its refusal returned instead of raised."""
        try:
            return await self.enqueue_one(instruction, body=body)
        except SymphonyError as exc:
            return exc

    def payload_body(self, instruction: PaymentInstruction) -> str:
        """What `enqueue_one`/`enqueue_batch` send as the payload: `check_storable` passed,
        then compact JSON. Raises the refusal (INVALID_CHARACTER, ...) otherwise."""
        return _payload_body(instruction)

    async def wake_workers(self) -> None:
        """Wake the workers (NOTIFY, from a transaction that writes nothing)."""
        await self.db.fetch_one(Role.INGEST, "wake_outbox_workers")

    async def aclose(self) -> None:
        """Let gathered enqueues finish (with `group_commit`). Safe to call more than once."""
        if self._group is not None:
            await self._group.aclose()

    async def claim(
        self, worker_id: str, batch_size: int, lease_seconds: int,
        *, buckets: BucketRange | None = None,
    ) -> list[ClaimedItem]:
        """Lease due items: from every bucket, or only from `buckets` (a worker of a fleet)."""
        params: dict[str, Any] = {
            "worker_id": worker_id, "batch_size": batch_size, "lease_seconds": lease_seconds,
        }
        if buckets is None:
            rows = await self.db.fetch_all(Role.EXECUTOR, "claim_outbox_batch", params)
        else:
            rows = await self.db.fetch_all(
                Role.EXECUTOR, "claim_outbox_batch_buckets",
                {**params, "bucket_from": buckets.first, "bucket_to": buckets.last},
            )
        return [
            ClaimedItem(
                outbox_id=r["outbox_id"],
                lease_token=r["lease_token"],
                lease_expires_at=r["lease_expires_at"],
                attempt_no=int(r["attempt_no"]),
                attempt_count=int(r["attempt_count"]),
                needs_lookup=bool(r["needs_lookup"]),
                participant_id=str(r["participant_id"]),
                sequence_id=int(r["sequence_id"]),
                instruction_id=str(r["instruction_id"]),
                rail_type=str(r["rail_type"]),
                payload=dict(r["payload"]),
            )
            for r in rows
        ]

    async def complete_batch(
        self, completions: Sequence[Completion], *, buckets: BucketRange | None = None
    ) -> list[CompletionResult]:
        """Record many outcomes in one statement. A fenced item (stale lease, or outside
        `buckets` when given) writes nothing and comes back with `fenced=True`; the others
        are recorded."""
        if not completions:
            return []
        params: dict[str, Any] = {
            "outbox_ids": [c.outbox_id for c in completions],
            "lease_tokens": [c.lease_token for c in completions],
            "outcomes": [c.outcome.value for c in completions],
            "error_codes": [c.error_code for c in completions],
            "error_details": [c.error_detail for c in completions],
            "ambiguous": [c.ambiguous for c in completions],
            "rail_transaction_ids": [c.rail_transaction_id for c in completions],
        }
        if buckets is None:
            rows = await self.db.fetch_all(Role.EXECUTOR, "complete_outbox_batch", params)
        else:
            rows = await self.db.fetch_all(
                Role.EXECUTOR, "complete_outbox_batch_buckets",
                {**params, "bucket_from": buckets.first, "bucket_to": buckets.last},
            )
        return [_completion_result(r) for r in rows]

    async def complete(self, completion: Completion) -> CompletionResult:
        """Record one outcome; a stale lease raises `LeaseFencedError` (SQLSTATE SY200)."""
        row = await self.db.fetch_one(
            Role.EXECUTOR,
            "complete_outbox_attempt",
            {
                "outbox_id": completion.outbox_id,
                "lease_token": completion.lease_token,
                "outcome": completion.outcome.value,
                "error_code": completion.error_code,
                "error_detail": completion.error_detail,
                "ambiguous": completion.ambiguous,
                "rail_transaction_id": completion.rail_transaction_id,
            },
        )
        assert row is not None
        return _completion_result({**row, "result": "COMPLETED"})

    async def repair_expired_leases(
        self, limit: int, *, threshold_seconds: int | None = None, role: Role = Role.EXECUTOR,
        buckets: BucketRange | None = None,
    ) -> list[RepairedItem]:
        """Requeue expired leases: in every bucket, or only in `buckets`."""
        params: dict[str, Any] = {"limit": limit, "threshold_seconds": threshold_seconds}
        if buckets is None:
            rows = await self.db.fetch_all(role, "repair_expired_leases", params)
        else:
            rows = await self.db.fetch_all(
                role, "repair_expired_leases_buckets",
                {**params, "bucket_from": buckets.first, "bucket_to": buckets.last},
            )
        return [
            RepairedItem(
                outbox_id=r["outbox_id"],
                attempt_no=int(r["attempt_no"]),
                attempt_count=int(r["attempt_count"]),
                claimed_by=str(r["claimed_by"]),
                lease_expires_at=r["lease_expires_at"],
            )
            for r in rows
        ]

    async def count_zombies(self) -> int:
        """Items whose lease expired and that await the zombie repair."""
        row = await self.db.fetch_one(Role.EXECUTOR, "count_zombies")
        return int(row["zombies"]) if row else 0

    async def status(self, role: Role = Role.READONLY) -> SupervisorStatus:
        row = await self.db.fetch_one(role, "supervisor_status")
        assert row is not None
        return SupervisorStatus(
            due=int(row["due"]),
            scheduled=int(row["scheduled"]),
            dispatching=int(row["dispatching"]),
            zombies=int(row["zombies"]),
            awaiting_lookup=int(row["awaiting_lookup"]),
            under_review=int(row["under_review"]),
            pending_total=int(row["pending_total"]),
            oldest_pending_at=row["oldest_pending_at"],
            dispatched_total=int(row["dispatched_total"]),
            failed_total=int(row["failed_total"]),
            observed_at=row["observed_at"],
        )

    async def review_queue(self, limit: int = 100, role: Role = Role.CONTROL) -> list[ReviewItem]:
        """Items under review, oldest first."""
        rows = await self.db.fetch_all(role, "review_queue", {"limit": limit})
        return [
            ReviewItem(
                outbox_id=r["outbox_id"],
                participant_id=str(r["participant_id"]),
                instruction_id=str(r["instruction_id"]),
                rail_type=str(r["rail_type"]),
                review_reason=str(r["review_reason"]),
                review_since=r["review_since"],
                attempt_count=int(r["attempt_count"]),
                last_error_code=r["last_error_code"],
            )
            for r in rows
        ]

    async def resolve_review(
        self,
        outbox_id: UUID,
        decision: ReviewDecision,
        *,
        decided_by: str,
        reason: str,
        rail_transaction_id: str | None = None,
    ) -> ReviewOutcome:
        """Record the rail's confirmed outcome of an item under review (role: control)."""
        row = await self.db.fetch_one(
            Role.CONTROL,
            "resolve_outbox_review",
            {
                "outbox_id": outbox_id,
                "decision": decision.value,
                "decided_by": decided_by,
                "reason": reason,
                "rail_transaction_id": rail_transaction_id,
            },
        )
        assert row is not None  # the function returns one row or raises
        return ReviewOutcome(
            outbox_id=row["outbox_id"],
            decision=ReviewDecision(row["decision"]),
            state=str(row["state"]),
            attempt_no=int(row["attempt_no"]),
        )

    async def participant_buckets(self, role: Role = Role.CONTROL) -> dict[str, int]:
        """The routing bucket of every participant (the worker fleet's map)."""
        rows = await self.db.fetch_all(role, "participant_buckets")
        return {str(r["participant_id"]): int(r["bucket"]) for r in rows}

    async def zombie_threshold_seconds(self) -> int:
        """The zombie threshold the database bounds every lease by (role: executor)."""
        row = await self.db.fetch_one(Role.EXECUTOR, "lease_policy")
        assert row is not None  # the policy table holds exactly one row
        return int(row["zombie_threshold_seconds"])

    async def ledger(self, outbox_id: UUID, role: Role = Role.AUDITOR) -> list[dict[str, Any]]:
        return await self.db.fetch_all(role, "item_ledger", {"outbox_id": outbox_id})

    async def item(self, outbox_id: UUID, role: Role = Role.READONLY) -> dict[str, Any] | None:
        return await self.db.fetch_one(role, "item_summary", {"outbox_id": outbox_id})

    # -- participant-scoped reads (the API's): another participant's item is simply absent --

    async def payment_for(self, participant_id: str, outbox_id: UUID) -> ParticipantPayment | None:
        """One of the participant's payments, or None (also when it is someone else's)."""
        row = await self.db.fetch_one(
            Role.READONLY, "participant_payment",
            {"participant_id": participant_id, "outbox_id": outbox_id},
        )
        return None if row is None else _participant_payment(row)

    async def attempts_for(self, participant_id: str, outbox_id: UUID) -> list[PaymentAttempt]:
        """The payment's history, oldest first; empty when it is not the participant's."""
        rows = await self.db.fetch_all(
            Role.READONLY, "participant_payment_attempts",
            {"participant_id": participant_id, "outbox_id": outbox_id},
        )
        return [
            PaymentAttempt(
                attempt_no=int(r["attempt_no"]),
                state=str(r["state"]),
                error_code=r["error_code"],
                error_detail=r["error_detail"],
                rail_transaction_id=r["rail_transaction_id"],
                recorded_at=r["recorded_at"],
            )
            for r in rows
        ]

    async def payments_for(
        self,
        participant_id: str,
        *,
        state: str | None = None,
        after: UUID | None = None,
        limit: int = 50,
    ) -> list[ParticipantPayment]:
        """The participant's payments, newest first. `after` is the outbox_id of the last item
        of the previous page (refused with INVALID_CURSOR unless it is the caller's own);
        `limit` is 1-200 (INVALID_BATCH_SIZE); `state` one of the logical states."""
        rows = await self.db.fetch_all(
            Role.READONLY, "participant_payments",
            {"participant_id": participant_id, "state": state, "after": after, "limit": limit},
        )
        return [_participant_payment(r) for r in rows]

    async def item_with_ledger(
        self, outbox_id: UUID, role: Role = Role.READONLY
    ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The item's summary and its ledger from one snapshot (so they agree), or None."""
        async with self.db.transaction(role, label="item_with_ledger", snapshot=True) as tx:
            summary = await tx.fetch_one("item_summary", {"outbox_id": outbox_id})
            if summary is None:
                return None
            ledger = await tx.fetch_all("item_ledger", {"outbox_id": outbox_id})
        return summary, ledger

    async def recent_failures(
        self, limit: int, role: Role = Role.READONLY
    ) -> list[dict[str, Any]]:
        """The newest FAILED items (at most `limit`, 1..MAX_FAILURES_LIMIT), newest first."""
        _check_bound("limit", limit, MAX_FAILURES_LIMIT, "INVALID_LIMIT")
        return await self.db.fetch_all(role, "ops_recent_failures", {"limit": limit})

    async def throughput(self, minutes: int, role: Role = Role.READONLY) -> list[dict[str, Any]]:
        """Items that reached DISPATCHED or FAILED per minute, for each of the last `minutes`
        minutes (1..MAX_THROUGHPUT_MINUTES), oldest first; the last one is in progress."""
        _check_bound("minutes", minutes, MAX_THROUGHPUT_MINUTES, "INVALID_WINDOW")
        return await self.db.fetch_all(role, "ops_throughput", {"minutes": minutes})

    async def metrics_snapshot(
        self, timeout_ms: int, role: Role = Role.READONLY
    ) -> dict[str, Any]:
        """The supervisor view and the ledger's rows by state, read in one statement that the
        server cancels after `timeout_ms` (a metrics scrape must not outlive its scraper)."""
        _check_bound("timeout_ms", timeout_ms, 60_000, "INVALID_TIMEOUT")
        async with self.db.transaction(role, label="outbox_metrics") as tx:
            await tx.fetch_one("set_local_statement_timeout", {"timeout_ms": timeout_ms})
            row = await tx.fetch_one("outbox_metrics")
        assert row is not None  # an aggregate over a view always returns one row
        return row


def _check_bound(name: str, value: int, maximum: int, code: str) -> None:
    # bool is an int too; a caller that passes True meant something else.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidRequestError(
            f"{name} must be an integer from 1 to {maximum}", code=code, context=f"store:{name}"
        )


def _participant_payment(row: dict[str, Any]) -> ParticipantPayment:
    return ParticipantPayment(
        outbox_id=row["outbox_id"],
        instruction_id=str(row["instruction_id"]),
        idempotency_key=str(row["idempotency_key"]),
        rail_type=str(row["rail_type"]),
        payload=dict(row["payload"]),
        state=str(row["state"]),
        attempt_count=int(row["attempt_count"]),
        next_attempt_at=row["next_attempt_at"],
        last_error_code=row["last_error_code"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        terminal_at=row["terminal_at"],
    )


def _completion_result(row: dict[str, Any]) -> CompletionResult:
    return CompletionResult(
        outbox_id=row["outbox_id"],
        fenced=row["result"] == "FENCED",
        state=row["state"],
        attempt_no=row["attempt_no"],
        next_attempt_at=row["next_attempt_at"],
    )


def _payload_body(instruction: PaymentInstruction) -> str:
    """The payload as the JSON text the enqueue functions receive, once `check_storable`
    passed it."""
    check_storable(instruction)
    try:
        return json.dumps(instruction.payload, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        # Nested past Python's own limit: far beyond the database's 32 levels anyway.
        raise InvalidRequestError(
            "payload must not be nested deeper than 32 levels",
            code="PAYLOAD_TOO_COMPLEX", context="enqueue",
        ) from None
    except (TypeError, ValueError):
        raise InvalidRequestError(
            "payload must be a JSON object of strings, numbers, booleans, lists and objects",
            code="INVALID_PAYLOAD", context="enqueue",
        ) from None


def _enqueue_result(row: dict[str, Any]) -> EnqueueResult:
    return EnqueueResult(
        outbox_id=row["outbox_id"],
        sequence_id=int(row["sequence_id"]),
        state=str(row["state"]),
        created=bool(row["created"]),
        created_at=row["created_at"],
    )
