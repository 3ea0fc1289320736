"""The auditor's view: every invariant (I1-I10) and the ledger's tamper evidence, checked on
the whole database in one read-only snapshot as `symphony_auditor`; ledger checkpoints.

    report = await verify(db)                 # or AuditStore(db).verify(since=..., limit=...)
    report.ok                                 # False if any check found a violation
    report.check("one_terminal").violations   # per check: invariant, counts, offending items
    [c.invariant for c in report.failed()]    # e.g. ["I6"]

Each check is one named query (`symphony.db` queries.sql, `audit_*`) that recomputes what the
schema should guarantee from the rows themselves, because a superuser or a restored backup can
bypass constraints and triggers. The checks trust no function of the audited schema, except
I8 and I9, whose owner functions read what the auditor may not (sequence numbers, lease
tokens) and return only ids and problem codes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from symphony.db import Database, InvalidRequestError, Role

MAX_LIMIT = 10000
DEFAULT_LIMIT = 100
# Per audit transaction (SET LOCAL): sorts of a million ledger rows stay in memory.
AUDIT_WORK_MEM = "256MB"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One check: the invariant it proves, its name, the query, and what it counts."""

    invariant: str
    name: str
    query: str
    unit: str
    title: str


# In the order they are printed. `unit` names the count a check reports as "checked".
CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("I1", "registry_identity", "audit_registry_identity", "items",
              "one item per (participant, instruction, key); outbox_id unique"),
    CheckSpec("I2", "one_pending_row", "audit_one_pending_row", "pending",
              "at most one pending row per item"),
    CheckSpec("I3", "append_only", "audit_append_only", "tables",
              "history triggers present and enabled ALWAYS; no role may change history"),
    CheckSpec("I4", "attempt_numbering", "audit_attempt_numbering", "ledger_rows",
              "attempt_no dense from 1; attempt_count and last_attempt_no match the ledger"),
    CheckSpec("I5", "legal_transitions", "audit_legal_transitions", "ledger_rows",
              "every ledger row is a legal transition"),
    CheckSpec("I6", "one_terminal", "audit_one_terminal", "items",
              "at most one DISPATCHED and one terminal row per item"),
    CheckSpec("I7", "pending_matches_ledger", "audit_pending_matches_ledger", "items",
              "pending if and only if not terminal; nothing outside the registry"),
    CheckSpec("I8", "sequences", "audit_sequences", "items",
              "sequence_id unique and dense per participant, allocator not behind"),
    CheckSpec("I9", "lease_fencing", "audit_lease_fencing", "ledger_rows",
              "every outcome follows a DISPATCHING of the same lease"),
    CheckSpec("I10", "no_failed_after_ambiguous", "audit_no_failed_after_ambiguous", "items",
              "no FAILED after an attempt that may have executed; lookup flag kept"),
    CheckSpec("I10", "review_rules", "audit_review_rules", "items",
              "under review means needs_lookup; review outcomes have their decision"),
    CheckSpec("E1", "events", "audit_events", "items",
              "every change a participant is told of has exactly one event, every event "
              "its cause; numbered without gaps"),
    CheckSpec("T1", "instruction_digests", "audit_instruction_digests", "items",
              "every registry row matches its instruction digest"),
    CheckSpec("T2", "ledger_chain", "audit_ledger_chain", "ledger_rows",
              "every ledger row's digest chains onto the row before it"),
    CheckSpec("T3", "checkpoint_chain", "audit_checkpoint_chain", "checkpoints",
              "checkpoints numbered without gaps, each chained onto the one before"),
    CheckSpec("T3", "checkpoint_heads", "audit_checkpoint_heads", "checkpoints",
              "every chain head a checkpoint recorded is unchanged; no row appeared below one"),
    CheckSpec("T3", "latest_checkpoint", "audit_latest_checkpoint", "checkpoints",
              "the latest checkpoint recomputes from the ledger (full audits only)"),
)

# Checks that make sense only over the whole ledger.
_FULL_ONLY = frozenset({"latest_checkpoint"})
# Catalog checks count what they look at themselves.
_HISTORY_TABLES = 7


@dataclass(frozen=True, slots=True)
class Violation:
    """One offending row or object. `outbox_id`/`attempt_no` locate a ledger item; `subject`
    names what else the problem is about (a participant, a trigger, a checkpoint)."""

    problem: str
    outbox_id: UUID | None = None
    attempt_no: int | None = None
    subject: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"problem": self.problem,
                "outbox_id": None if self.outbox_id is None else str(self.outbox_id),
                "attempt_no": self.attempt_no, "subject": self.subject}

    def describe(self) -> str:
        where = []
        if self.outbox_id is not None:
            where.append(str(self.outbox_id))
        if self.attempt_no is not None:
            where.append(f"attempt {self.attempt_no}")
        if self.subject:
            where.append(self.subject)
        return f"{' '.join(where) or '-'}: {self.problem}"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: how much it looked at, how many violations, which (bounded
    by the audit's limit: `violations` counts them all, `items` lists at most `limit`)."""

    invariant: str
    name: str
    title: str
    checked: int
    unit: str
    violations: int
    items: tuple[Violation, ...] = ()
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.violations == 0

    @property
    def outbox_ids(self) -> list[UUID]:
        """The offending items listed (distinct, in order)."""
        seen: dict[UUID, None] = {}
        for v in self.items:
            if v.outbox_id is not None:
                seen.setdefault(v.outbox_id, None)
        return list(seen)

    def as_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "name": self.name, "title": self.title,
                "ok": self.ok, "skipped": self.skipped, "checked": self.checked,
                "unit": self.unit, "violations": self.violations,
                "items": [v.as_dict() for v in self.items]}


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Every check of one audit, all from one snapshot of the database."""

    checks: tuple[CheckResult, ...]
    counts: dict[str, int]
    snapshot_at: datetime | None
    since: datetime | None
    limit: int
    elapsed_seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    # "full", "since" (a given time) or "since-checkpoint" (from the latest checkpoint, whose
    # number is `checkpoint_id`).
    mode: str = "full"
    checkpoint_id: int | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def check(self, name: str) -> CheckResult:
        """The result of the check called `name` (e.g. "one_terminal")."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def invariant(self, invariant: str) -> list[CheckResult]:
        """The results of the checks of one invariant ("I1" ... "I10", "T1" ... "T3")."""
        return [c for c in self.checks if c.invariant == invariant]

    @property
    def failed_invariants(self) -> list[str]:
        return list(dict.fromkeys(c.invariant for c in self.failed()))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "mode": self.mode, "checkpoint_id": self.checkpoint_id,
                "counts": self.counts,
                "snapshot_at": self.snapshot_at, "since": self.since, "limit": self.limit,
                "elapsed_seconds": round(self.elapsed_seconds, 3),
                "failed_invariants": self.failed_invariants,
                "checks": [c.as_dict() for c in self.checks],
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed-off anchor over every chain head (digests as hex)."""

    checkpoint_id: int
    taken_at: datetime
    up_to_attempt_id: int
    row_count: int
    item_count: int
    heads_digest: str
    previous_digest: str | None
    checkpoint_digest: str
    taken_by: str
    changed_items: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Checkpoint:
        prev = row.get("previous_digest")
        changed = row.get("changed_items")
        return cls(
            checkpoint_id=int(row["checkpoint_id"]), taken_at=row["taken_at"],
            up_to_attempt_id=int(row["up_to_attempt_id"]), row_count=int(row["row_count"]),
            item_count=int(row["item_count"]), heads_digest=bytes(row["heads_digest"]).hex(),
            previous_digest=None if prev is None else bytes(prev).hex(),
            checkpoint_digest=bytes(row["checkpoint_digest"]).hex(),
            taken_by=str(row["taken_by"]),
            changed_items=None if changed is None else int(changed),
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checkpoint_id": self.checkpoint_id, "taken_at": self.taken_at.isoformat(),
            "up_to_attempt_id": self.up_to_attempt_id, "row_count": self.row_count,
            "item_count": self.item_count, "heads_digest": self.heads_digest,
            "previous_digest": self.previous_digest,
            "checkpoint_digest": self.checkpoint_digest, "taken_by": self.taken_by,
        }
        if self.changed_items is not None:
            out["changed_items"] = self.changed_items
        return out


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(
            f"the audit limit must be a whole number between 1 and {MAX_LIMIT}",
            code="INVALID_AUDIT_LIMIT", context="audit",
        )
    return limit


def _check_since(since: datetime | None) -> datetime | None:
    if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
        raise InvalidRequestError(
            "--since must be a timestamp with a time zone (e.g. 2026-01-31T12:00:00+00:00)",
            code="INVALID_AUDIT_SINCE", context="audit",
        )
    return since


def _violation(row: dict[str, Any]) -> Violation:
    oid = row.get("outbox_id")
    return Violation(
        problem=str(row["problem"]),
        outbox_id=None if oid is None else (oid if isinstance(oid, UUID) else UUID(str(oid))),
        attempt_no=None if row.get("attempt_no") is None else int(row["attempt_no"]),
        subject=None if row.get("subject") is None else str(row["subject"]),
    )


class AuditStore:
    """The audit as the auditor (`verify`, `checkpoints`) and checkpoints as control."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def verify(
        self,
        *,
        since: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        checks: Sequence[str] | None = None,
        since_checkpoint: bool = False,
    ) -> AuditReport:
        """Run every check (or those named in `checks`) in one read-only snapshot.

        `since` restricts the item-level checks to items registered, or with a ledger row
        recorded, at or after it (the catalog and checkpoint-chain checks always run; the
        latest checkpoint is recomputed only by a full audit). `since_checkpoint` is the
        routine audit: from the latest checkpoint (in the same snapshot), the items with a
        ledger row written after it or registered since, and every live item; its cost follows
        what was written since the checkpoint, not the ledger's size. With no checkpoint yet it
        is a full audit. `limit` bounds the violations listed per check (1-10000); each check
        still counts all of them.
        """
        limit = _check_limit(limit)
        since = _check_since(since)
        if since_checkpoint and since is not None:
            raise InvalidRequestError("--since and --since-checkpoint exclude each other",
                                      code="INVALID_AUDIT_SINCE", context="audit")
        wanted = None if checks is None else set(checks)
        if wanted is not None:
            unknown = wanted - {c.name for c in CHECKS}
            if unknown:
                raise InvalidRequestError(
                    f"unknown audit check(s): {', '.join(sorted(unknown))}",
                    code="INVALID_AUDIT_CHECK", context="audit")
        params: dict[str, Any] = {"since": since, "limit": limit, "from_checkpoint": False,
                                  "scope_ids": None, "scope_participants": None}
        mode = "full" if since is None else "since"
        checkpoint_id: int | None = None
        started = time.perf_counter()
        timings: dict[str, float] = {}
        results: list[CheckResult] = []
        async with self.db.transaction(Role.AUDITOR, label="audit-verify", snapshot=True) as tx:
            t0 = time.perf_counter()
            await tx.fetch_one("audit_work_mem", {"work_mem": AUDIT_WORK_MEM})
            if since_checkpoint:
                scope = await tx.fetch_one("audit_checkpoint_scope")
                if scope is not None:
                    start = await tx.fetch_one("audit_checkpoint_since", {
                        "taken_at": scope["taken_at"],
                        "up_to_attempt_id": scope["up_to_attempt_id"]})
                    assert start is not None
                    since = start["since"]
                    checkpoint_id = int(scope["checkpoint_id"])
                    params.update(since=since, from_checkpoint=True)
                    mode = "since-checkpoint"
            if since is not None:
                # The items in scope, once: every check probes its table by them.
                ids = await tx.fetch_one("audit_scope_ids", params)
                params["scope_ids"] = [] if ids is None else list(ids["scope_ids"])
                params["scope_participants"] = (
                    [] if ids is None else list(ids["scope_participants"]))
            counts_row = await tx.fetch_one("audit_scope_counts", params) or {}
            # The checkpoint, the scope and the counts: what runs before the checks.
            timings["scope"] = time.perf_counter() - t0
            counts = {k: int(v) for k, v in counts_row.items() if k != "snapshot_at"}
            counts["tables"] = _HISTORY_TABLES
            for spec in CHECKS:
                if wanted is not None and spec.name not in wanted:
                    continue
                if since is not None and spec.name in _FULL_ONLY:
                    results.append(CheckResult(spec.invariant, spec.name, spec.title, 0,
                                               spec.unit, 0, (), skipped=True))
                    continue
                t0 = time.perf_counter()
                rows = await tx.fetch_all(spec.query, params)
                timings[spec.name] = time.perf_counter() - t0
                total = int(rows[0]["total"]) if rows else 0
                results.append(CheckResult(
                    invariant=spec.invariant, name=spec.name, title=spec.title,
                    checked=counts.get(spec.unit, 0), unit=spec.unit, violations=total,
                    items=tuple(_violation(r) for r in rows)))
        return AuditReport(
            checks=tuple(results), counts=counts, snapshot_at=counts_row.get("snapshot_at"),
            since=since, limit=limit, elapsed_seconds=time.perf_counter() - started,
            timings=timings, mode=mode, checkpoint_id=checkpoint_id)

    async def checkpoint(self) -> Checkpoint:
        """Take a ledger checkpoint (control role). Ledger inserts do not wait for it; it waits
        for the ledger writers in flight when it starts (docs/audit.md)."""
        row = await self.db.fetch_one(Role.CONTROL, "take_ledger_checkpoint",
                                      label="audit-checkpoint")
        assert row is not None
        return Checkpoint.from_row(row)

    async def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first (auditor role), to keep outside the database."""
        rows = await self.db.fetch_all(Role.AUDITOR, "ledger_checkpoints",
                                       label="audit-export-checkpoints")
        return [Checkpoint.from_row(r) for r in rows]


async def verify(
    db: Database, *, since: datetime | None = None, limit: int = DEFAULT_LIMIT,
    checks: Sequence[str] | None = None, since_checkpoint: bool = False,
) -> AuditReport:
    """`AuditStore(db).verify(...)`: every check in one snapshot, as the auditor."""
    return await AuditStore(db).verify(since=since, limit=limit, checks=checks,
                                       since_checkpoint=since_checkpoint)
