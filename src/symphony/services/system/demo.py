"""Sample payments for `symphony run --demo`, and the live view that follows them.

The sample mixes payments the simulator executes at once with ones it fails retryably
(`RETRY:2`), declines (`FAIL:INSUFFICIENT_FUNDS`) or hangs on after executing (`HANG:1`), so
the whole state machine shows within a minute: retries with backoff, terminal failures, and
the ambiguous timeout that the next attempt settles with a lookup instead of a second send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from symphony.db import Database, Role
from symphony.outbox import AccessStore, OutboxStore, PaymentInstruction

# Fast retries so that every demo payment settles within a minute: 200 ms doubling to 2 s.
DEMO_RETRY_POLICY: Final[dict[str, Any]] = {
    "max_attempts": 8,
    "backoff_base_ms": 200,
    "backoff_max_ms": 2_000,
    "jitter_ratio": 0.2,
}
DEMO_DISPATCH_TIMEOUT_SECONDS: Final = 2.0
DEMO_LOOKUP_TIMEOUT_SECONDS: Final = 1.0
DEMO_ENQUEUE_PER_SECOND: Final = 10.0

_PARTICIPANTS: Final = ("bank-alpha", "bank-bravo", "bank-charlie")
_RAILS: Final = ("RTP", "ACH", "FPS", "SEPA_CT")
_CURRENCY_FOR_RAIL: Final = {"RTP": "USD", "ACH": "USD", "FPS": "GBP", "SEPA_CT": "EUR"}


def demo_destination(index: int) -> str:
    """Every tenth payment of each kind misbehaves the same way, so the mix is predictable."""
    match index % 10:
        case 3:
            return "RETRY:2"
        case 6:
            return "FAIL:INSUFFICIENT_FUNDS"
        case 9:
            return "HANG:1"
        case _:
            return f"ACCT-{100_000 + index * 7919 % 900_000}"


def demo_instructions(count: int, *, run_id: str | None = None) -> list[PaymentInstruction]:
    """`count` sample payments; a new `run_id` (default: now) makes them new items."""
    run = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    instructions = []
    for index in range(count):
        rail = _RAILS[index % len(_RAILS)]
        instructions.append(
            PaymentInstruction(
                instruction_id=f"demo-{run}-{index:04d}",
                idempotency_key=f"demo-{run}-{index:04d}",
                participant_id=_PARTICIPANTS[index % len(_PARTICIPANTS)],
                rail_type=rail,
                payload={
                    "amount": f"{10 + (index * 37) % 990}.{index % 100:02d}",
                    "currency": _CURRENCY_FOR_RAIL[rail],
                    "destination": demo_destination(index),
                },
            )
        )
    return instructions


async def register_demo_participants(db: Database) -> list[str]:
    """Register the demo's participants (as the control role) unless they exist: enqueue
    accepts registered, ACTIVE participants only. Returns the ids it added."""
    access = AccessStore(db)
    known = {p.participant_id for p in await access.list_participants()}
    added = []
    for participant_id in _PARTICIPANTS:
        if participant_id not in known:
            await access.add_participant(participant_id, f"Demo {participant_id}")
            added.append(participant_id)
    return added


async def apply_retry_policy(db: Database, policy: dict[str, Any]) -> dict[str, Any]:
    """Set the retry policy (as the control role); returns the policy it replaced."""
    previous = await db.fetch_one(Role.CONTROL, "retry_policy")
    await db.fetch_one(Role.CONTROL, "set_retry_policy", policy)
    assert previous is not None  # the table holds exactly one row (migration 0002)
    return {key: previous[key] for key in DEMO_RETRY_POLICY}


async def enqueue_stream(
    store: OutboxStore,
    instructions: list[PaymentInstruction],
    *,
    per_second: float = DEMO_ENQUEUE_PER_SECOND,
    on_enqueued: Callable[[UUID], None] | None = None,
) -> list[UUID]:
    """Enqueue at a steady pace (a stream, not one burst); returns the outbox ids."""
    ids = []
    pause = 1.0 / per_second
    for instruction in instructions:
        result = await store.enqueue(instruction)
        ids.append(result.outbox_id)
        if on_enqueued is not None:
            on_enqueued(result.outbox_id)
        await asyncio.sleep(pause)
    return ids


@dataclass(frozen=True, slots=True)
class DemoSnapshot:
    """One line of the live view."""

    elapsed_seconds: float
    due: int
    dispatching: int
    retry_scheduled: int
    dispatched: int
    failed: int
    zombies: int
    demo_enqueued: int
    demo_unsettled: int

    def line(self) -> str:
        return (
            f"[{self.elapsed_seconds:5.1f}s] due {self.due:3d} | dispatching "
            f"{self.dispatching:3d} | retry-scheduled {self.retry_scheduled:3d} | dispatched "
            f"{self.dispatched:4d} | failed {self.failed:3d} | zombies {self.zombies:2d} | demo "
            f"{self.demo_enqueued - self.demo_unsettled}/{self.demo_enqueued} settled"
        )


async def snapshot(store: OutboxStore, ids: list[UUID], started: float) -> DemoSnapshot:
    status = await store.status()
    unsettled = 0
    if ids:
        row = await store.db.fetch_one(Role.READONLY, "count_still_pending", {"outbox_ids": ids})
        unsettled = int(row["pending"]) if row else 0
    return DemoSnapshot(
        elapsed_seconds=time.monotonic() - started,
        due=status.due,
        dispatching=status.dispatching,
        retry_scheduled=status.scheduled,
        dispatched=status.dispatched_total,
        failed=status.failed_total,
        zombies=status.zombies,
        demo_enqueued=len(ids),
        demo_unsettled=unsettled,
    )
