"""What operators read and do: the queue browse, an item's operator history, one
participant's view, the worker fleet, and the accountable actions.

Reads run as `symphony_readonly` (the API) or `symphony_control` (the command line). Actions
from the API run as `symphony_operator`, whose functions verify the acting token themselves
(its id and the salted hash the database keeps) and record who acted, why and what came of
it in the append-only `symphony_ops.operator_actions`, in the action's own transaction.

The browse pages by an opaque cursor (a position, not an item: it stays valid when the item
it names moves on). At most `BROWSE_WINDOW` registry rows are looked at per call; filters
apply to those, so a page may come back short with `has_more` and a cursor to go on with.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from symphony.db import Database, InvalidRequestError, Role
from symphony.outbox.access import Caller
from symphony.outbox.model import BUCKET_COUNT, BucketRange

MAX_BROWSE_LIMIT: Final = 200
BROWSE_WINDOW: Final = 1000
# States an operator can filter by: REVIEW is a pending item that waits for an operator;
# CANCELED exists once cancellation does.
BROWSE_STATES: Final = ("REVIEW", "PENDING", "DISPATCHING", "DISPATCHED", "FAILED", "CANCELED")

_TOP: Final = (datetime.max.replace(tzinfo=UTC), UUID(int=(1 << 128) - 1))
_BOTTOM: Final = (datetime.min.replace(tzinfo=UTC), UUID(int=0))


@dataclass(frozen=True, slots=True)
class BrowsePage:
    items: list[dict[str, Any]]
    has_more: bool
    next_after: str | None
    scanned: int


@dataclass(frozen=True, slots=True)
class FleetWorker:
    worker_id: str
    buckets: BucketRange
    version: str
    started_at: datetime
    last_cycle_at: datetime | None
    in_flight: int
    heartbeat_at: datetime
    heartbeat_age_seconds: float
    stale_after_seconds: int
    stale: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "bucket_from": self.buckets.first,
            "bucket_to": self.buckets.last,
            "version": self.version,
            "started_at": self.started_at,
            "last_cycle_at": self.last_cycle_at,
            "in_flight": self.in_flight,
            "heartbeat_at": self.heartbeat_at,
            "heartbeat_age_seconds": self.heartbeat_age_seconds,
            "stale_after_seconds": self.stale_after_seconds,
            "stale": self.stale,
        }


@dataclass(frozen=True, slots=True)
class Fleet:
    """The workers that sent a heartbeat in the last day, and the routing buckets no live
    worker covers (an alert: items there are claimed by nobody)."""

    workers: list[FleetWorker]
    uncovered: list[BucketRange]
    observed_at: datetime | None

    @property
    def live(self) -> list[FleetWorker]:
        return [w for w in self.workers if not w.stale]

    @property
    def stale(self) -> list[FleetWorker]:
        return [w for w in self.workers if w.stale]

    @property
    def uncovered_count(self) -> int:
        return sum(r.last - r.first + 1 for r in self.uncovered)

    def as_dict(self) -> dict[str, Any]:
        return {
            "live_workers": len(self.live),
            "stale_workers": len(self.stale),
            "uncovered_buckets": [{"bucket_from": r.first, "bucket_to": r.last}
                                  for r in self.uncovered],
            "uncovered_bucket_count": self.uncovered_count,
            "bucket_count": BUCKET_COUNT,
            "alert": bool(self.uncovered),
            "workers": [w.as_dict() for w in self.workers],
        }


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a worker says about itself once per heartbeat interval."""

    worker_id: str
    buckets: BucketRange
    version: str
    started_at: datetime
    last_cycle_at: datetime | None
    in_flight: int
    stale_after_seconds: int = field(default=30)


def encode_cursor(at: datetime, outbox_id: UUID) -> str:
    """An opaque page cursor: a position (time, id), base64url."""
    raw = f"{at.isoformat()}|{outbox_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, UUID]:
    """The position of a cursor from `encode_cursor`; INVALID_CURSOR otherwise."""
    try:
        if len(text) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        at_text, _, id_text = raw.partition("|")
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("no time zone")
        return at, UUID(id_text)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidRequestError(
            "the cursor is not one this API handed out", code="INVALID_CURSOR"
        ) from exc


def _bucket_ranges(rows: list[dict[str, Any]]) -> list[BucketRange]:
    return [BucketRange(int(r["bucket_from"]), int(r["bucket_to"])) for r in rows]


class OperatorStore:
    """The operator's reads and actions; see the module docstring."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads --------------------------------------------------------------------------------

    async def browse(
        self,
        *,
        state: str | None = None,
        participant: str | None = None,
        rail: str | None = None,
        after: str | None = None,
        limit: int = 50,
        role: Role = Role.READONLY,
    ) -> BrowsePage:
        """One page of items, newest first (REVIEW: oldest first, the order they wait in)."""
        if not 1 <= limit <= MAX_BROWSE_LIMIT:
            raise InvalidRequestError(
                f"limit must be between 1 and {MAX_BROWSE_LIMIT}", code="INVALID_BATCH_SIZE")
        if state is not None and state not in BROWSE_STATES:
            raise InvalidRequestError(
                f"state must be one of {', '.join(BROWSE_STATES)}", code="INVALID_STATE_FILTER")
        if state == "REVIEW":
            at, after_id = decode_cursor(after) if after else _BOTTOM
            rows = await self.db.fetch_all(role, "ops_browse_review", {
                "after_at": at, "after_id": after_id, "participant": participant,
                "rail": rail, "limit": limit + 1})
            more = len(rows) > limit
            rows = rows[:limit]
            cursor = (encode_cursor(rows[-1]["review_since"], rows[-1]["outbox_id"])
                      if more else None)
            return BrowsePage([_item(r) for r in rows], more, cursor, len(rows))
        at, after_id = decode_cursor(after) if after else _TOP
        filtered = state is not None or rail is not None
        window = BROWSE_WINDOW if filtered else limit + 1
        params = {"after_at": at, "after_id": after_id, "state": state, "rail": rail,
                  "limit": limit + 1, "window": window, "participant": participant}
        query = ("ops_browse_participant_payments" if participant is not None
                 else "ops_browse_payments")
        rows = await self.db.fetch_all(role, query, params)
        edge = next((r for r in rows if r["edge"]), None)
        hits = [r for r in rows if not r["edge"]]
        scanned = int(edge["scanned"]) if edge else 0
        if len(hits) > limit:
            hits = hits[:limit]
            last = hits[-1]
            return BrowsePage([_item(r) for r in hits], True,
                              encode_cursor(last["created_at"], last["outbox_id"]), scanned)
        if edge is not None and scanned >= window:
            # The window was full but the page is not: more rows lie beyond what was looked at.
            return BrowsePage([_item(r) for r in hits], True,
                              encode_cursor(edge["created_at"], edge["outbox_id"]), scanned)
        return BrowsePage([_item(r) for r in hits], False, None, scanned)

    async def item_actions(
        self, outbox_id: UUID, role: Role = Role.READONLY
    ) -> list[dict[str, Any]]:
        """The operator actions on one item, oldest first (the command line's review
        decisions included)."""
        return await self.db.fetch_all(role, "ops_item_actions", {"outbox_id": outbox_id})

    async def participant_summary(
        self, participant_id: str, role: Role = Role.READONLY
    ) -> dict[str, Any] | None:
        """One participant's live counts by state, oldest pending item, items ended in the
        last hour and day, failure rate over the last hour; None for an unknown id."""
        row = await self.db.fetch_one(role, "ops_participant_summary",
                                      {"participant_id": participant_id})
        if row is None:
            return None
        ended = int(row["dispatched_last_hour"]) + int(row["failed_last_hour"])
        oldest = row["oldest_pending_at"]
        return {
            **row,
            "failure_rate_last_hour": (int(row["failed_last_hour"]) / ended) if ended else None,
            "oldest_pending_age_seconds": (
                max(0.0, (row["observed_at"] - oldest).total_seconds()) if oldest else None),
        }

    async def participant_actions(
        self, participant_id: str, limit: int = 20, role: Role = Role.READONLY
    ) -> list[dict[str, Any]]:
        return await self.db.fetch_all(role, "ops_participant_actions",
                                       {"participant_id": participant_id, "limit": limit})

    async def tokens(self, limit: int = 200, role: Role = Role.READONLY) -> list[dict[str, Any]]:
        return await self.db.fetch_all(role, "ops_api_tokens", {"limit": limit})

    async def fleet(self, role: Role = Role.READONLY) -> Fleet:
        async with self.db.transaction(role, label="fleet") as tx:
            workers = await tx.fetch_all("fleet_workers")
            uncovered = await tx.fetch_all("fleet_uncovered_buckets")
        return Fleet(
            workers=[FleetWorker(
                worker_id=str(r["worker_id"]),
                buckets=BucketRange(int(r["bucket_from"]), int(r["bucket_to"])),
                version=str(r["version"]),
                started_at=r["started_at"],
                last_cycle_at=r["last_cycle_at"],
                in_flight=int(r["in_flight"]),
                heartbeat_at=r["heartbeat_at"],
                heartbeat_age_seconds=float(r["heartbeat_age_seconds"]),
                stale_after_seconds=int(r["stale_after_seconds"]),
                stale=bool(r["stale"]),
            ) for r in workers],
            uncovered=_bucket_ranges(uncovered),
            observed_at=workers[0]["observed_at"] if workers else None,
        )

    # -- the worker's heartbeat ---------------------------------------------------------------

    async def heartbeat(self, beat: Heartbeat) -> datetime:
        """Record one heartbeat (as the executor): one upsert."""
        row = await self.db.fetch_one(Role.EXECUTOR, "record_worker_heartbeat", {
            "worker_id": beat.worker_id,
            "bucket_from": beat.buckets.first,
            "bucket_to": beat.buckets.last,
            "version": beat.version,
            "started_at": beat.started_at,
            "last_cycle_at": beat.last_cycle_at,
            "in_flight": beat.in_flight,
            "stale_after_seconds": beat.stale_after_seconds,
        })
        assert row is not None
        at: datetime = row["heartbeat_at"]
        return at

    async def end_heartbeat(self, worker_id: str) -> bool:
        row = await self.db.fetch_one(Role.EXECUTOR, "end_worker_heartbeat",
                                      {"worker_id": worker_id})
        return bool(row and row["ended"])

    # -- actions (role: operator; the database verifies the acting token) -------------------

    async def resolve_review(
        self, actor: Caller, outbox_id: UUID, decision: str, reason: str,
        rail_transaction_id: str | None,
    ) -> dict[str, Any]:
        row = await self.db.fetch_one(Role.OPERATOR, "ops_resolve_review", {
            **_actor(actor), "outbox_id": outbox_id, "decision": decision, "reason": reason,
            "rail_transaction_id": rail_transaction_id})
        assert row is not None
        return row

    async def revoke_participant(
        self, actor: Caller, participant_id: str, reason: str
    ) -> dict[str, Any]:
        row = await self.db.fetch_one(Role.OPERATOR, "ops_revoke_participant", {
            **_actor(actor), "participant_id": participant_id, "reason": reason})
        assert row is not None
        return row

    async def revoke_token(self, actor: Caller, token_id: UUID, reason: str) -> dict[str, Any]:
        row = await self.db.fetch_one(Role.OPERATOR, "ops_revoke_token", {
            **_actor(actor), "target_token_id": token_id, "reason": reason})
        assert row is not None
        return row

    async def replay_webhook_delivery(
        self, actor: Caller, delivery_id: UUID, reason: str
    ) -> dict[str, Any]:
        """Send a webhook delivery's event again (a new delivery, same webhook-id), recorded
        with the token. `result`: REPLAYED (the new delivery), or, with nothing written,
        REPLAY_PENDING (a replay of the same original still waits: that one) or
        ENDPOINT_DELETED."""
        row = await self.db.fetch_one(Role.OPERATOR, "ops_replay_webhook_delivery", {
            **_actor(actor), "delivery_id": delivery_id, "reason": reason})
        assert row is not None
        return row


def _actor(caller: Caller) -> dict[str, Any]:
    return {"token_id": caller.token_id, "secret_hash": caller.credential}


def _item(row: dict[str, Any]) -> dict[str, Any]:
    payload = row.get("payload") or {}
    return {
        "outbox_id": row["outbox_id"],
        "participant_id": row["participant_id"],
        "instruction_id": row["instruction_id"],
        "rail_type": row["rail_type"],
        "state": row["state"],
        "amount": payload.get("amount") if isinstance(payload, dict) else None,
        "currency": payload.get("currency") if isinstance(payload, dict) else None,
        "destination": payload.get("destination") if isinstance(payload, dict) else None,
        "attempt_count": row["attempt_count"],
        "next_attempt_at": row["next_attempt_at"],
        "last_error_code": row["last_error_code"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "review_reason": row.get("review_reason"),
    }
