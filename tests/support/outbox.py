"""Builders of valid outbox inputs, so each test states only what it is about."""

from __future__ import annotations

import uuid
from typing import Any

from symphony.db import Database
from symphony.outbox import AccessStore, PaymentInstruction

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
