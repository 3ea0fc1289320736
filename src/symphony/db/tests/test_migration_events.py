"""The payment-events migration on a database in use: items written before it (dispatched,
failed, retrying, under review, resolved from review) get their events, numbered per
participant in the order their causes happened; the audit's events check passes; new events
continue each participant's numbers.

The migration is found by name, not number (numbers may change when branches merge).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from symphony.db import Database, DatabaseSettings, migrate, test_only
from symphony.db.migration import load_migrations
from symphony.outbox import (
    AccessStore,
    Completion,
    OutboxStore,
    Outcome,
    PaymentInstruction,
    ReviewDecision,
    verify,
)

MIGRATION = next(m for m in load_migrations() if m.name.endswith("_payment_events.sql"))
BEFORE = MIGRATION.version - 1


@pytest.fixture
async def database_before(
    server_admin_dsn: str, symphony_home: Path
) -> AsyncIterator[tuple[str, Database]]:
    name = f"symphony_migevt_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    await migrate(dsn, up_to=BEFORE)
    db = await Database.open(
        DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(symphony_home)),
        require_migrated=False,
    )
    try:
        yield dsn, db
    finally:
        await db.close()
        await test_only.drop_database(server_admin_dsn, name)


async def _enqueue(store: OutboxStore, name: str, participant: str) -> uuid.UUID:
    result = await store.enqueue(PaymentInstruction(
        instruction_id=f"e-{name}", idempotency_key=f"key-{name}", participant_id=participant,
        rail_type="RTP",
        payload={"amount": "10.00", "currency": "USD", "destination": f"acct-{name}"}))
    return result.outbox_id


async def _complete(store: OutboxStore, outbox_id: uuid.UUID, outcome: Outcome,
                    *, ambiguous: bool = False) -> None:
    [c] = [c for c in await store.claim("mig-worker", 100, 60) if c.outbox_id == outbox_id]
    await store.complete(Completion(outbox_id, c.lease_token, outcome, "X", ambiguous=ambiguous,
                                    rail_transaction_id="rtx" if outcome == "DISPATCHED" else None))


async def test_earlier_items_get_their_events_in_order(
    database_before: tuple[str, Database],
) -> None:
    dsn, db = database_before
    store = OutboxStore(db)
    for p in ("bank-a", "bank-b"):
        await AccessStore(db).add_participant(p, p)
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET max_attempts = 1, backoff_base_ms = 0, "
             "backoff_max_ms = 0, ambiguous_settle_ms = 0")
    review = await _enqueue(store, "review", "bank-b")
    await _complete(store, review, Outcome.RETRYABLE, ambiguous=True)
    resolved = await _enqueue(store, "resolved", "bank-b")
    await _complete(store, resolved, Outcome.RETRYABLE, ambiguous=True)
    await store.resolve_review(resolved, ReviewDecision.FAILED, decided_by="op",
                               reason="no payment at the rail")
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET max_attempts = 8, "
             "backoff_base_ms = 3600000, backoff_max_ms = 3600000")
    dispatched = await _enqueue(store, "dispatched", "bank-a")
    await _complete(store, dispatched, Outcome.DISPATCHED)
    failed = await _enqueue(store, "failed", "bank-a")
    await _complete(store, failed, Outcome.FAILED)
    retrying = await _enqueue(store, "retrying", "bank-a")
    await _complete(store, retrying, Outcome.RETRYABLE)

    await migrate(dsn)

    rows = await test_only.query_no_role(
        dsn, "SELECT participant_id, event_seq, event_type, outbox_id, "
             "       payload->>'state' AS state "
             "  FROM symphony.payment_events ORDER BY participant_id, event_seq")
    got = [(r["participant_id"], r["event_seq"], r["event_type"], r["outbox_id"]) for r in rows]
    assert got == [
        ("bank-a", 1, "payment.created", dispatched),
        ("bank-a", 2, "payment.dispatched", dispatched),
        ("bank-a", 3, "payment.created", failed),
        ("bank-a", 4, "payment.failed", failed),
        ("bank-a", 5, "payment.created", retrying),
        ("bank-b", 1, "payment.created", review),
        ("bank-b", 2, "payment.under_review", review),
        ("bank-b", 3, "payment.created", resolved),
        ("bank-b", 4, "payment.under_review", resolved),
        ("bank-b", 5, "payment.failed", resolved),
    ]
    # The payment as it is now (the backfill's moment), its history in the attempts.
    assert rows[1]["state"] == "DISPATCHED" and rows[4]["state"] == "RETRYABLE"
    report = await verify(db)
    assert report.ok, [c.as_dict() for c in report.failed()]

    # New events continue the participants' numbers.
    await _enqueue(store, "after", "bank-a")
    last = await test_only.query_no_role(
        dsn, "SELECT max(event_seq) AS n FROM symphony.payment_events "
             " WHERE participant_id = 'bank-a'")
    assert last[0]["n"] == 6
    assert (await verify(db, checks=["events"])).ok
