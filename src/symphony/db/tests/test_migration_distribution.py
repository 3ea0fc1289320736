"""The distribution-keys migration on a database in use: items in every state, built by the
real functions at the migration before it, keep every row and value; the ledger and the review
decisions learn each row's participant from the registry; every key of a per-item table holds
participant_id; the invariants still hold and the old items go on under the bucket overloads.

The migration is found by name, not number (numbers may change when branches merge).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from symphony.db import Database, DatabaseSettings, Role, migrate, pending_migrations, test_only
from symphony.db.migration import load_migrations
from symphony.outbox import (
    AccessStore,
    BucketRange,
    ClaimedItem,
    Completion,
    OutboxStore,
    Outcome,
    PaymentInstruction,
    ReviewDecision,
)

MIGRATION = next(m for m in load_migrations() if m.name.endswith("_distribution_keys.sql"))
BEFORE = MIGRATION.version - 1


@pytest.fixture
async def database_before(
    server_admin_dsn: str, symphony_home: Path
) -> AsyncIterator[tuple[str, Database]]:
    name = f"symphony_migdist_{uuid.uuid4().hex[:10]}"
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


_SNAPSHOT = {
    "registry": "SELECT to_jsonb(t) AS row FROM symphony.payment_instruction_registry t "
                "ORDER BY outbox_id",
    "pending": "SELECT to_jsonb(t) AS row FROM symphony.payment_outbox_pending t "
               "ORDER BY outbox_id",
    "ledger": "SELECT to_jsonb(t) AS row FROM symphony.payment_outbox_attempts t "
              "ORDER BY attempt_id",
    "sequences": "SELECT to_jsonb(t) AS row FROM symphony.participant_outbox_sequences t "
                 "ORDER BY participant_id",
    "decisions": "SELECT to_jsonb(t) AS row FROM symphony.outbox_review_decisions t "
                 "ORDER BY decision_id",
    "participants": "SELECT to_jsonb(t) AS row FROM symphony.participants t "
                    "ORDER BY participant_id",
}


async def _snapshot(dsn: str) -> dict[str, list[dict[str, Any]]]:
    return {name: [r["row"] for r in await test_only.query_no_role(dsn, sql)]
            for name, sql in _SNAPSHOT.items()}


async def _enqueue(store: OutboxStore, name: str, participant: str) -> uuid.UUID:
    result = await store.enqueue(PaymentInstruction(
        instruction_id=f"d-{name}", idempotency_key=f"key-{name}", participant_id=participant,
        rail_type="RTP",
        payload={"amount": "10.00", "currency": "USD", "destination": f"acct-{name}"}))
    return result.outbox_id


async def _claim(store: OutboxStore, outbox_id: uuid.UUID) -> ClaimedItem:
    [item] = [c for c in await store.claim("mig-worker", 100, 60) if c.outbox_id == outbox_id]
    return item


async def test_distribution_keys_keep_every_item_in_every_state(
    database_before: tuple[str, Database],
) -> None:
    dsn, db = database_before
    store = OutboxStore(db)
    access = AccessStore(db)
    for p in ("bank-a", "bank-b", "bank-c", "bank-d"):
        await access.add_participant(p, p)
    # A one-attempt ceiling and no settle time while the review items are built.
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET max_attempts = 1, backoff_base_ms = 0, "
             "backoff_max_ms = 0, jitter_ratio = 0, ambiguous_settle_ms = 0")
    ids: dict[str, uuid.UUID] = {}
    for name, participant in (("review", "bank-d"), ("reviewed-retry", "bank-d"),
                              ("reviewed-dispatched", "bank-c")):
        ids[name] = await _enqueue(store, name, participant)
        c = await _claim(store, ids[name])
        await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.RETRYABLE,
                                        "RAIL_TIMEOUT", ambiguous=True))
    # Retries far away, so a RETRYABLE item stays scheduled while the others are built.
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET max_attempts = 8, "
             "backoff_base_ms = 3600000, backoff_max_ms = 3600000, ambiguous_settle_ms = 30000")

    ids["dispatched"] = await _enqueue(store, "dispatched", "bank-a")
    c = await _claim(store, ids["dispatched"])
    await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-1"))
    ids["failed"] = await _enqueue(store, "failed", "bank-a")
    c = await _claim(store, ids["failed"])
    await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.FAILED, "CLOSED"))
    ids["retryable"] = await _enqueue(store, "retryable", "bank-b")
    c = await _claim(store, ids["retryable"])
    await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.RETRYABLE, "BUSY"))
    ids["lookup"] = await _enqueue(store, "lookup", "bank-b")
    c = await _claim(store, ids["lookup"])
    await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.RETRYABLE,
                                    "RAIL_TIMEOUT", ambiguous=True))
    ids["leased"] = await _enqueue(store, "leased", "bank-c")
    held = await _claim(store, ids["leased"])
    ids["zombie"] = await _enqueue(store, "zombie", "bank-c")
    await _claim(store, ids["zombie"])
    await test_only.query_no_role(
        dsn, "UPDATE symphony.payment_outbox_pending "
             "   SET lease_expires_at = now() - interval '1 second' WHERE outbox_id = %s",
        (ids["zombie"],))
    assert [r.outbox_id for r in await store.repair_expired_leases(10)] == [ids["zombie"]]
    ids["pending"] = await _enqueue(store, "pending", "bank-a")
    # Resolved last: a RETRY decision makes its item due, and the claims above take any due item.
    await store.resolve_review(ids["reviewed-retry"], ReviewDecision.RETRY,
                               decided_by="op", reason="asked the rail again")
    await store.resolve_review(ids["reviewed-dispatched"], ReviewDecision.DISPATCHED,
                               decided_by="op", reason="statement", rail_transaction_id="rtx-9")

    states = {r["outbox_id"]: r for r in await test_only.query_no_role(
        dsn, "SELECT outbox_id, lease_token IS NOT NULL AS leased, needs_lookup, "
             "       review_reason, next_attempt_at > now() AS scheduled "
             "  FROM symphony.payment_outbox_pending")}
    assert set(states) == {ids[k] for k in ("review", "reviewed-retry", "retryable", "lookup",
                                            "leased", "zombie", "pending")}
    assert states[ids["review"]]["review_reason"] == "UNSETTLED_AT_RETRY_LIMIT"
    assert states[ids["leased"]]["leased"] and states[ids["zombie"]]["needs_lookup"]
    assert states[ids["lookup"]]["needs_lookup"] and states[ids["retryable"]]["scheduled"]

    before = await _snapshot(dsn)
    assert len(before["decisions"]) == 2
    assert await pending_migrations(dsn) == [m.name for m in load_migrations()[BEFORE:]]
    await migrate(dsn)
    after = await _snapshot(dsn)

    # Every row, as it was, column for column; the new columns come on top.
    for name, rows in before.items():
        assert [{k: row[k] for k in old} for row, old in zip(after[name], rows, strict=True)] \
            == rows, name
    owner = {r["outbox_id"]: r["participant_id"] for r in after["registry"]}
    assert all(r["participant_id"] == owner[r["outbox_id"]] for r in after["ledger"])
    assert all(r["participant_id"] == owner[r["outbox_id"]] for r in after["decisions"])
    expected_bucket = {r["participant_id"]: r["bucket"] for r in await test_only.query_no_role(
        dsn, "SELECT participant_id, "
             "       ((hashtext(participant_id)::bigint + 2147483648) >> 24)::int AS bucket "
             "  FROM symphony.participants")}
    assert all(r["bucket"] == expected_bucket[r["participant_id"]] for r in after["pending"])
    assert all(r["bucket"] == expected_bucket[r["participant_id"]] for r in after["participants"])

    keys = {r["conname"]: r["def"] for r in await test_only.query_no_role(
        dsn, "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
             " WHERE connamespace = 'symphony'::regnamespace AND contype IN ('p', 'u', 'f')")}
    assert keys["payment_outbox_pending_pkey"] == "PRIMARY KEY (outbox_id, participant_id)"
    assert keys["payment_outbox_attempts_pkey"] == "PRIMARY KEY (attempt_id, participant_id)"
    assert keys["payment_outbox_attempts_outbox_attempt_no_key"] == \
        "UNIQUE (outbox_id, attempt_no, participant_id)"
    assert keys["payment_instruction_registry_outbox_id_key"] == \
        "UNIQUE (outbox_id, participant_id)"
    assert keys["outbox_review_decisions_pkey"] == "PRIMARY KEY (decision_id, participant_id)"
    for fk in ("payment_outbox_pending_outbox_id_fkey", "payment_outbox_attempts_outbox_id_fkey",
               "outbox_review_decisions_outbox_id_fkey"):
        assert keys[fk].startswith("FOREIGN KEY (outbox_id, participant_id) REFERENCES "
                                   "symphony.payment_instruction_registry(outbox_id, "
                                   "participant_id)"), keys[fk]

    # The invariants hold (I4, I5, I7), and the append-only rule is back on (I3).
    assert await db.fetch_all(Role.AUDITOR, "audit_illegal_transitions", {"limit": 10}) == []
    assert await db.fetch_all(Role.AUDITOR, "audit_pending_mismatch", {"limit": 10}) == []
    triggers = await test_only.query_no_role(
        dsn, "SELECT tgname, tgenabled FROM pg_trigger WHERE tgname IN "
             "('payment_outbox_attempts_append_only', 'outbox_review_decisions_append_only')")
    assert {r["tgenabled"] for r in triggers} == {"A"} and len(triggers) == 2

    # The old items go on through the bucket overloads: the held lease completes in its own
    # bucket, every due item is claimed from the buckets that hold it, the review resolves.
    buckets = BucketRange.all()
    [done] = await store.complete_batch(
        [Completion(held.outbox_id, held.lease_token, Outcome.DISPATCHED,
                    rail_transaction_id="rtx-test")], buckets=buckets)
    assert not done.fenced and done.state == "DISPATCHED"
    await test_only.query_no_role(
        dsn, "UPDATE symphony.payment_outbox_pending SET next_attempt_at = now() "
             " WHERE review_reason IS NULL")
    claimed = []
    for p, bucket in expected_bucket.items():
        claimed += [(p, c) for c in await store.claim(
            "mig-worker-2", 100, 60, buckets=BucketRange(bucket, bucket))]
    got = {c.outbox_id for _, c in claimed}
    assert {k for k, v in ids.items() if v in got} == {
        "reviewed-retry", "retryable", "lookup", "zombie", "pending"}
    assert all(c.participant_id == owner[str(c.outbox_id)] for _, c in claimed)
    results = await store.complete_batch(
        [Completion(c.outbox_id, c.lease_token, Outcome.DISPATCHED, rail_transaction_id="rtx")
         for _, c in claimed], buckets=buckets)
    assert {r.state for r in results} == {"DISPATCHED"}
    outcome = await store.resolve_review(ids["review"], ReviewDecision.FAILED, decided_by="op",
                                         reason="rail confirmed not executed")
    assert outcome.state == "FAILED"
    assert await test_only.query_no_role(
        dsn, "SELECT outbox_id FROM symphony.payment_outbox_pending") == []
    assert await db.fetch_all(Role.AUDITOR, "audit_pending_mismatch", {"limit": 10}) == []
    assert await db.fetch_all(Role.AUDITOR, "audit_illegal_transitions", {"limit": 10}) == []
    # New rows carry their participant too.
    unfilled = await test_only.query_no_role(
        dsn, "SELECT count(*) AS n FROM symphony.payment_outbox_attempts a "
             "  JOIN symphony.payment_instruction_registry r ON r.outbox_id = a.outbox_id "
             " WHERE a.participant_id IS DISTINCT FROM r.participant_id")
    assert unfilled == [{"n": 0}]
