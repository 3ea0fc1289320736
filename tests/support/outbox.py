"""Builders of valid outbox inputs, so each test states only what it is about."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from symphony.db import Database, test_only
from symphony.outbox import AccessStore, OutboxStore, PaymentInstruction

# Enqueue refuses participants that are not registered and ACTIVE (SY030). Every test
# database registers these at creation (tests/support/database.py), so `instruction()` works
# as it is; a test about sequences or revocation registers fresh ones with
# `register_participant`.
TEST_PARTICIPANT = "participant-test"
TEST_PARTICIPANTS = (TEST_PARTICIPANT, "participant-cli", "participant-a", "p1", "p-tx")


def payload(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"amount": "125.50", "currency": "EUR", "destination": "acct-0001"}
    base.update(overrides)
    return base


def instruction(**overrides: Any) -> PaymentInstruction:
    """A valid instruction with fresh ids, for the shared test participant; override any
    field."""
    suffix = uuid.uuid4().hex[:16]
    fields: dict[str, Any] = {
        "instruction_id": f"instr-{suffix}",
        "idempotency_key": f"key-{suffix}",
        "participant_id": TEST_PARTICIPANT,
        "rail_type": "SEPA_CT",
        "payload": payload(),
    }
    fields.update(overrides)
    return PaymentInstruction(**fields)


async def register_participant(db: Database, participant_id: str | None = None) -> str:
    """Register a participant (a fresh id unless given) through the control role; its id."""
    pid = participant_id or f"participant-{uuid.uuid4().hex[:12]}"
    await AccessStore(db).add_participant(pid, f"Test participant {pid}")
    return pid


async def until_drained(
    store: OutboxStore,
    admin_dsn: str,
    *,
    each_round: Callable[[], Awaitable[object]] | None = None,
    stall_seconds: float = 90.0,
) -> None:
    """Polls until nothing is pending (each_round runs between polls).

    Fails only when the queue stops moving: no new ledger row and no item ended for
    `stall_seconds`. A total deadline fails a correct run on a loaded machine (the workers'
    timeouts turn slow answers into ambiguous ones, each settled by a lookup later); progress
    is read from the database, so a slow run passes and a stuck one still fails.
    """
    last: tuple[int, int, int] | None = None
    moved_at = time.monotonic()
    while True:
        status = await store.status()
        if status.pending_total == 0:
            return
        rows = await test_only.query_no_role(
            admin_dsn, "SELECT coalesce(max(attempt_id), 0) AS n "
                       "  FROM symphony.payment_outbox_attempts")
        progress = (status.dispatched_total, status.failed_total, int(rows[0]["n"]))
        if progress != last:
            last, moved_at = progress, time.monotonic()
        assert time.monotonic() - moved_at < stall_seconds, (
            f"the queue has not moved for {stall_seconds:.0f} s: {status}")
        if each_round is not None:
            await each_round()
        await asyncio.sleep(0.2)  # polling a condition, not waiting for luck
