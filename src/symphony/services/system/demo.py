"""Sample payments for `symphony run --demo`, and the live view that follows them.

The sample mixes payments the simulator executes at once with ones it fails retryably
(`RETRY:2`), declines (`FAIL:INSUFFICIENT_FUNDS`) or hangs on after executing (`HANG:1`), so
the whole state machine shows within a minute: retries with backoff, terminal failures, and
the ambiguous timeout that the next attempt settles with a lookup instead of a second send.

The payments go in through the HTTP API (`submit_stream`), each with its participant's token
and Idempotency-Key, exactly as a participant's system would send them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import httpx

from symphony.db import Database, Role
from symphony.outbox import OutboxStore, PaymentInstruction

# Fast retries so that every demo payment settles within a minute: 200 ms doubling to 2 s,
# and a hung payment is looked up 2 s after its timeout (30 s outside the demo).
DEMO_RETRY_POLICY: Final[dict[str, Any]] = {
    "max_attempts": 8,
    "backoff_base_ms": 200,
    "backoff_max_ms": 2_000,
    "jitter_ratio": 0.2,
    "ambiguous_settle_ms": 2_000,
}
DEMO_DISPATCH_TIMEOUT_SECONDS: Final = 2.0
DEMO_LOOKUP_TIMEOUT_SECONDS: Final = 1.0
DEMO_ENQUEUE_PER_SECOND: Final = 10.0

DEMO_PARTICIPANTS: Final = ("bank-alpha", "bank-bravo", "bank-charlie")
_SUBMIT_TRIES: Final = 3
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
                participant_id=DEMO_PARTICIPANTS[index % len(DEMO_PARTICIPANTS)],
                rail_type=rail,
                payload={
                    "amount": f"{10 + (index * 37) % 990}.{index % 100:02d}",
                    "currency": _CURRENCY_FOR_RAIL[rail],
                    "destination": demo_destination(index),
                },
            )
        )
    return instructions


async def apply_retry_policy(db: Database, policy: dict[str, Any]) -> dict[str, Any]:
    """Set the retry policy (as the control role); returns the policy it replaced."""
    previous = await db.fetch_one(Role.CONTROL, "retry_policy")
    await db.fetch_one(Role.CONTROL, "set_retry_policy", policy)
    assert previous is not None  # the table holds exactly one row (migration 0002)
    return {key: previous[key] for key in DEMO_RETRY_POLICY}


class DemoFeedError(Exception):
    """The API refused a demo payment (it never should: the sample is valid)."""


def payment_request(instruction: PaymentInstruction) -> dict[str, Any]:
    """The `POST /v1/payments` body of an instruction (the participant is the token's)."""
    return {
        "instruction_id": instruction.instruction_id,
        "rail_type": instruction.rail_type,
        **instruction.payload,
    }


async def submit_stream(
    client: httpx.AsyncClient,
    tokens: Mapping[str, str],
    instructions: list[PaymentInstruction],
    *,
    per_second: float = DEMO_ENQUEUE_PER_SECOND,
    on_enqueued: Callable[[UUID], None] | None = None,
) -> list[UUID]:
    """Submit through the HTTP API at a steady pace (a stream, not one burst), each with its
    participant's token and its own Idempotency-Key; returns the outbox ids.

    A 503 is retried with the same key, which is what the key is for: the retry cannot
    create a second payment.
    """
    ids = []
    pause = 1.0 / per_second
    for instruction in instructions:
        headers = {
            "Authorization": f"Bearer {tokens[instruction.participant_id]}",
            "Idempotency-Key": instruction.idempotency_key,
        }
        for attempt in range(_SUBMIT_TRIES):
            response = await client.post("/v1/payments", json=payment_request(instruction),
                                         headers=headers)
            if response.status_code != 503 or attempt == _SUBMIT_TRIES - 1:
                break
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        if response.status_code not in (200, 201):
            code = response.json().get("code") if response.content else None
            raise DemoFeedError(
                f"the API refused demo payment {instruction.instruction_id}: "
                f"{response.status_code} {code} (request {response.headers.get('x-request-id')})"
            )
        outbox_id = UUID(response.json()["outbox_id"])
        ids.append(outbox_id)
        if on_enqueued is not None:
            on_enqueued(outbox_id)
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
