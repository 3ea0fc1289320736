"""Migration 0007 on a database in use: items in every state, built by the real functions at
0006, come through the key change, the participant backfill and the new foreign keys intact;
the invariants still hold, and the old items keep working under the new rules."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from symphony.db import (
    Database,
    DatabaseSettings,
    MigrationError,
    Role,
    migrate,
    pending_migrations,
    test_only,
)
from symphony.db.migration import load_migrations
from symphony.outbox import Completion, OutboxStore, Outcome

BEFORE = 6  # the last migration before participants


@pytest.fixture
async def database_at_0006(
    server_admin_dsn: str, symphony_home: Path
) -> AsyncIterator[tuple[str, Database]]:
    name = f"symphony_mig7_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    report = await migrate(dsn, up_to=BEFORE)
    assert report.latest == load_migrations()[BEFORE - 1].name
    db = await Database.open(
        DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(symphony_home)),
        require_migrated=False,
    )
    try:
        yield dsn, db
    finally:
        await db.close()
        await test_only.drop_database(server_admin_dsn, name)


async def _enqueue_at_0006(db: Database, instruction_id: str, participant: str) -> uuid.UUID:
    """The 0006 enqueue function, called as ingest (its result has no created_at yet)."""
    rows = await test_only.execute_as_role(
        db, Role.INGEST,
        "SELECT outbox_id FROM symphony.enqueue_payment_outbox(%s, %s, %s, 'RTP', %s::jsonb)",
        (instruction_id, f"key-{instruction_id}", participant,
         json.dumps({"amount": "10.00", "currency": "USD", "destination": f"acct-{instruction_id}"})),
    )
    return uuid.UUID(str(rows[0]["outbox_id"]))


async def _claim_one(store: OutboxStore, outbox_id: uuid.UUID) -> Completion:
    [item] = await store.claim("mig-worker", 1, 120)
    assert item.outbox_id == outbox_id
    return Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                      rail_transaction_id="rtx-test")


# The digest columns a later migration (tamper-evident ledger) adds and backfills are left
# out: what was there before must be unchanged.
_SNAPSHOT = {
    "registry": "SELECT to_jsonb(r) - 'instruction_digest' AS row "
                "  FROM symphony.payment_instruction_registry r ORDER BY outbox_id",
    "pending": "SELECT to_jsonb(p) AS row FROM symphony.payment_outbox_pending p "
               "ORDER BY outbox_id",
    "ledger": "SELECT to_jsonb(a) - 'row_digest' - 'lease_digest' AS row "
              "  FROM symphony.payment_outbox_attempts a ORDER BY attempt_id",
    "sequences": "SELECT to_jsonb(s) AS row FROM symphony.participant_outbox_sequences s "
                 "ORDER BY participant_id",
}


async def _snapshot(dsn: str) -> dict[str, list[Any]]:
    return {name: [r["row"] for r in await test_only.query_no_role(dsn, sql)]
            for name, sql in _SNAPSHOT.items()}


async def test_migration_0007_keeps_every_item_in_every_state(
    database_at_0006: tuple[str, Database],
) -> None:
    dsn, db = database_at_0006
    store = OutboxStore(db)
    # Retries far away: a RETRYABLE item stays scheduled while the others are built.
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET backoff_base_ms = 3600000, "
             "backoff_max_ms = 3600000, jitter_ratio = 0")
    ids: dict[str, uuid.UUID] = {}

    ids["dispatched"] = await _enqueue_at_0006(db, "m-dispatched", "bank-a")
    await store.complete(await _claim_one(store, ids["dispatched"]))

    ids["failed"] = await _enqueue_at_0006(db, "m-failed", "bank-a")
    c = await _claim_one(store, ids["failed"])
    await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.FAILED, "CLOSED"))

    ids["retryable"] = await _enqueue_at_0006(db, "m-retryable", "bank-b")
    c = await _claim_one(store, ids["retryable"])
    await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.RETRYABLE, "BUSY"))

    ids["lookup"] = await _enqueue_at_0006(db, "m-lookup", "bank-b")
    c = await _claim_one(store, ids["lookup"])
    await store.complete(Completion(c.outbox_id, c.lease_token, Outcome.RETRYABLE,
                                    "RAIL_TIMEOUT", ambiguous=True))

    ids["leased"] = await _enqueue_at_0006(db, "m-leased", "bank-c")
    held = await _claim_one(store, ids["leased"])

    ids["zombie"] = await _enqueue_at_0006(db, "m-zombie", "bank-c")
    await _claim_one(store, ids["zombie"])
    await test_only.query_no_role(
        dsn, "UPDATE symphony.payment_outbox_pending "
             "   SET lease_expires_at = now() - interval '1 second' WHERE outbox_id = %s",
        (ids["zombie"],))
    repaired = await store.repair_expired_leases(10)
    assert [r.outbox_id for r in repaired] == [ids["zombie"]]

    ids["pending"] = await _enqueue_at_0006(db, "m-pending", "bank-a")

    states = await test_only.query_no_role(
        dsn, "SELECT p.outbox_id, p.lease_token IS NOT NULL AS leased, p.needs_lookup, "
             "       p.next_attempt_at > now() AS scheduled FROM symphony.payment_outbox_pending p")
    by_id = {r["outbox_id"]: r for r in states}
    assert set(by_id) == {ids[k] for k in ("retryable", "lookup", "leased", "zombie", "pending")}
    assert by_id[ids["leased"]]["leased"] and by_id[ids["lookup"]]["needs_lookup"]
    assert by_id[ids["zombie"]]["needs_lookup"] and by_id[ids["retryable"]]["scheduled"]

    before = await _snapshot(dsn)
    assert await pending_migrations(dsn) == [m.name for m in load_migrations()[BEFORE:]]

    report = await migrate(dsn)
    assert report.applied == [m.name for m in load_migrations()[BEFORE:]]

    # Every row, ledger entry, pending entry (leases included) and sequence, as it was (column
    # for column; later migrations may add columns, such as the participant on the ledger).
    after = await _snapshot(dsn)
    for name, rows in before.items():
        assert [{k: row[k] for k in old} for row, old in zip(after[name], rows, strict=True)] \
            == rows, name
    participants = await test_only.query_no_role(
        dsn, "SELECT participant_id, status, display_name FROM symphony.participants "
             "ORDER BY participant_id")
    assert participants == [
        {"participant_id": p, "status": "ACTIVE", "display_name": p}
        for p in ("bank-a", "bank-b", "bank-c")
    ]
    key = await test_only.query_no_role(
        dsn, "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint "
             " WHERE conname = 'payment_instruction_registry_pkey'")
    assert key == [{"def": "PRIMARY KEY (participant_id, instruction_id, idempotency_key)"}]

    # The auditor's checks find nothing (I4, I5, I7).
    assert await db.fetch_all(Role.AUDITOR, "audit_illegal_transitions", {"limit": 10}) == []
    assert await db.fetch_all(Role.AUDITOR, "audit_pending_mismatch", {"limit": 10}) == []

    # Old items work under the new rules: logical states, replays, the held lease.
    seen = {k: await store.payment_for(p, ids[k]) for k, p in (
        ("dispatched", "bank-a"), ("failed", "bank-a"), ("retryable", "bank-b"),
        ("lookup", "bank-b"), ("leased", "bank-c"), ("zombie", "bank-c"),
        ("pending", "bank-a"))}
    assert {k: v.state if v else None for k, v in seen.items()} == {
        "dispatched": "DISPATCHED", "failed": "FAILED", "retryable": "RETRYABLE",
        "lookup": "RETRYABLE", "leased": "DISPATCHING", "zombie": "PENDING",
        "pending": "PENDING"}
    assert await store.payment_for("bank-b", ids["dispatched"]) is None

    replay = await test_only.execute_as_role(
        db, Role.INGEST,
        "SELECT * FROM symphony.enqueue_payment_outbox('m-dispatched', 'key-m-dispatched', "
        "'bank-a', 'RTP', %s::jsonb)",
        (json.dumps({"amount": "10.00", "currency": "USD", "destination": "acct-m-dispatched"}),))
    assert replay[0]["outbox_id"] == ids["dispatched"] and replay[0]["created"] is False
    assert replay[0]["state"] == "DISPATCHED"
    registered = await test_only.query_no_role(
        dsn, "SELECT created_at FROM symphony.payment_instruction_registry "
             " WHERE outbox_id = %s", (ids["dispatched"],))
    assert replay[0]["created_at"] == registered[0]["created_at"]
    # Another participant may now use bank-a's pair: a new item, bank-b's third.
    other = await test_only.execute_as_role(
        db, Role.INGEST,
        "SELECT * FROM symphony.enqueue_payment_outbox('m-dispatched', 'key-m-dispatched', "
        "'bank-b', 'RTP', %s::jsonb)",
        (json.dumps({"amount": "10.00", "currency": "USD", "destination": "acct-m-dispatched"}),))
    assert other[0]["created"] is True and other[0]["outbox_id"] != ids["dispatched"]
    assert other[0]["sequence_id"] == 3

    done = await store.complete(held)
    assert done.state == "DISPATCHED"
    assert await db.fetch_all(Role.AUDITOR, "audit_pending_mismatch", {"limit": 10}) == []


async def test_migrating_up_to_an_unknown_version_is_refused() -> None:
    with pytest.raises(MigrationError) as info:
        # Refused before any connection is made: the DSN leads nowhere.
        await migrate("host=/nonexistent dbname=none", up_to=len(load_migrations()) + 1)
    assert info.value.code == "MIGRATION_UNKNOWN_TARGET"
