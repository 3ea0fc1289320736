"""Builders of valid outbox inputs, so each test states only what it is about."""

from __future__ import annotations

import uuid
from typing import Any

from symphony.outbox import PaymentInstruction


def payload(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"amount": "125.50", "currency": "EUR", "destination": "acct-0001"}
    base.update(overrides)
    return base


def instruction(**overrides: Any) -> PaymentInstruction:
    """A valid instruction with fresh ids; override any field."""
    suffix = uuid.uuid4().hex[:16]
    fields: dict[str, Any] = {
        "instruction_id": f"instr-{suffix}",
        "idempotency_key": f"key-{suffix}",
        "participant_id": f"participant-{suffix[:8]}",
        "rail_type": "SEPA_CT",
        "payload": payload(),
    }
    fields.update(overrides)
    return PaymentInstruction(**fields)
