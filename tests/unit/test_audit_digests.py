"""The serialization docs/audit.md documents is the one the database seals with: the digests
of registry rows, ledger rows and checkpoints recomputed here, in Python, from what the
auditor may read, equal the stored ones. An auditor can therefore check an export without
trusting any function of the audited database."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.outbox import instruction

from symphony.db import Database, Role, test_only
from symphony.outbox import AuditStore, Completion, OutboxStore, Outcome

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def field(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    return f"{len(text)}:{text}"


def micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def canonical(tag: str, values: list[Any]) -> bytes:
    return (tag + "".join("|" + field(v) for v in values)).encode("utf-8")


async def test_the_documented_serialization_recomputes_every_digest(isolated_db: Database) -> None:
    store = OutboxStore(isolated_db)
    first = await store.enqueue(instruction())
    second = await store.enqueue(instruction())
    claimed = {c.outbox_id: c for c in await store.claim("digest-w", 10, 60)}
    await store.complete_batch([
        Completion(first.outbox_id, claimed[first.outbox_id].lease_token, Outcome.DISPATCHED,
                   rail_transaction_id="rtx-ü-1"),
        Completion(second.outbox_id, claimed[second.outbox_id].lease_token, Outcome.RETRYABLE,
                   error_code="RAIL_TIMEOUT", error_detail="no answer | in 0.3 s",
                   ambiguous=True),
    ])
    await AuditStore(isolated_db).checkpoint()
    ids = [first.outbox_id, second.outbox_id]

    registry = await test_only.execute_as_role(
        isolated_db, Role.AUDITOR,
        "SELECT outbox_id, participant_id, instruction_id, idempotency_key, rail_type, "
        "       payload::text AS payload_text, created_at, instruction_digest "
        "  FROM symphony.payment_instruction_registry WHERE outbox_id = ANY(%s)", (ids,))
    instruction_digest = {}
    for r in registry:
        expected = hashlib.sha256(canonical("symphony-instruction-v1", [
            r["outbox_id"], r["participant_id"], r["instruction_id"], r["idempotency_key"],
            r["rail_type"], r["payload_text"], micros(r["created_at"])])).digest()
        assert bytes(r["instruction_digest"]) == expected
        instruction_digest[r["outbox_id"]] = expected

    ledger = await test_only.execute_as_role(
        isolated_db, Role.AUDITOR,
        "SELECT outbox_id, attempt_no, state::text AS state, worker_id, error_code, "
        "       error_detail, rail_transaction_id, recorded_at, recorded_by, lease_digest, "
        "       row_digest "
        "  FROM symphony.payment_outbox_attempts WHERE outbox_id = ANY(%s) "
        " ORDER BY outbox_id, attempt_no", (ids,))
    previous: dict[Any, bytes] = dict(instruction_digest)
    for a in ledger:
        lease = None if a["lease_digest"] is None else bytes(a["lease_digest"]).hex()
        expected = hashlib.sha256(previous[a["outbox_id"]] + canonical("symphony-attempt-v1", [
            a["outbox_id"], a["attempt_no"], a["state"], a["worker_id"], a["error_code"],
            a["error_detail"], a["rail_transaction_id"], micros(a["recorded_at"]),
            a["recorded_by"], lease])).digest()
        assert bytes(a["row_digest"]) == expected, (a["outbox_id"], a["attempt_no"])
        previous[a["outbox_id"]] = expected
    assert len(ledger) == 4

    # The checkpoint: its digest from its fields and the previous checkpoint's digest.
    checkpoints = await test_only.execute_as_role(
        isolated_db, Role.AUDITOR,
        "SELECT * FROM symphony.ledger_checkpoints ORDER BY checkpoint_id")
    prior = b""
    for c in checkpoints:
        expected = hashlib.sha256(prior + canonical("symphony-checkpoint-v1", [
            c["checkpoint_id"], micros(c["taken_at"]), c["up_to_attempt_id"], c["row_count"],
            c["item_count"], bytes(c["heads_digest"]).hex(), c["taken_by"]])).digest()
        assert bytes(c["checkpoint_digest"]) == expected
        prior = expected

    # The heads digest of the latest one, over every item's newest covered row.
    heads = await test_only.execute_as_role(
        isolated_db, Role.AUDITOR,
        "SELECT DISTINCT ON (outbox_id) outbox_id, attempt_no, row_digest "
        "  FROM symphony.payment_outbox_attempts WHERE attempt_id <= %s "
        " ORDER BY outbox_id, attempt_no DESC", (checkpoints[-1]["up_to_attempt_id"],))
    text = "\n".join(f"{h['outbox_id']}:{h['attempt_no']}:{bytes(h['row_digest']).hex()}"
                     for h in sorted(heads, key=lambda h: h["outbox_id"].bytes))
    assert bytes(checkpoints[-1]["heads_digest"]) == hashlib.sha256(text.encode()).digest()
