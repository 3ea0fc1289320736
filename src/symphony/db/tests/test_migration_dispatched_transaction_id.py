"""The dispatched-needs-transaction-id migration on a database in use.

A database written before it may hold DISPATCHED rows without a transaction id (the lookup
path wrote them). The ledger is append-only and chained, so those rows stay exactly as they
were: the constraint is added NOT VALID there, holds for every row written afterwards, and
the audit still passes. A database without such rows ends with the constraint VALID.

The migration is found by name, not number (numbers may change when branches merge).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from symphony.db import Database, DatabaseSettings, SymphonyError, migrate, test_only
from symphony.db.migration import load_migrations
from symphony.outbox import (
    AccessStore,
    Completion,
    OutboxStore,
    Outcome,
    PaymentInstruction,
    verify,
)

MIGRATION = next(m for m in load_migrations()
                 if m.name.endswith("_dispatched_needs_transaction_id.sql"))
BEFORE = MIGRATION.version - 1
CONSTRAINT = "payment_outbox_attempts_dispatched_transaction_id"


@pytest.fixture
async def database_before(
    server_admin_dsn: str, symphony_home: Path
) -> AsyncIterator[tuple[str, Database]]:
    name = f"symphony_migtx_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    await migrate(dsn, up_to=BEFORE)
    db = await Database.open(
        DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(symphony_home)),
        require_migrated=False,
    )
    try:
        await AccessStore(db).add_participant("bank-a", "bank-a")
        yield dsn, db
    finally:
        await db.close()
        await test_only.drop_database(server_admin_dsn, name)


async def _dispatch(store: OutboxStore, name: str, transaction_id: str | None) -> uuid.UUID:
    result = await store.enqueue(PaymentInstruction(
        instruction_id=f"tx-{name}", idempotency_key=f"key-{name}", participant_id="bank-a",
        rail_type="RTP",
        payload={"amount": "10.00", "currency": "USD", "destination": f"acct-{name}"}))
    [item] = [c for c in await store.claim("mig-worker", 100, 60)
              if c.outbox_id == result.outbox_id]
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                    error_detail="confirmed by lookup",
                                    rail_transaction_id=transaction_id))
    return result.outbox_id


async def _ledger(dsn: str) -> list[dict[str, Any]]:
    return [r["row"] for r in await test_only.query_no_role(
        dsn, "SELECT to_jsonb(t) AS row FROM symphony.payment_outbox_attempts t "
             "ORDER BY attempt_id")]


async def _validated(dsn: str) -> bool | None:
    rows = await test_only.query_no_role(
        dsn, "SELECT convalidated FROM pg_constraint WHERE conname = %s "
             "   AND conrelid = 'symphony.payment_outbox_attempts'::regclass", (CONSTRAINT,))
    return bool(rows[0]["convalidated"]) if rows else None


async def test_rows_closed_without_proof_stay_and_new_ones_are_refused(
    database_before: tuple[str, Database],
) -> None:
    dsn, db = database_before
    store = OutboxStore(db)
    # What the lookup path wrote before: NULL and empty ids, next to a proper one.
    unproven = [await _dispatch(store, "null", None), await _dispatch(store, "empty", "")]
    proven = await _dispatch(store, "proper", "rtx-1")
    before = await _ledger(dsn)
    assert await _validated(dsn) is None

    await migrate(dsn)

    # Nothing rewritten (the chain's digests included), the constraint there but NOT VALID.
    assert await _ledger(dsn) == before
    assert await _validated(dsn) is False
    report = await verify(db)
    assert report.ok, [c.as_dict() for c in report.failed()]
    unproven_rows = await test_only.query_no_role(
        dsn, "SELECT outbox_id FROM symphony.payment_outbox_attempts "
             " WHERE state = 'DISPATCHED' AND coalesce(btrim(rail_transaction_id), '') = '' "
             " ORDER BY outbox_id")
    assert {r["outbox_id"] for r in unproven_rows} == set(unproven)
    assert proven not in {r["outbox_id"] for r in unproven_rows}

    # From now on, the rule holds for every writer.
    with pytest.raises(SymphonyError) as info:
        await _dispatch(store, "after", None)
    assert info.value.code == "DISPATCHED_WITHOUT_TRANSACTION_ID"
    assert await _dispatch(store, "after-proper", "rtx-2")


async def test_a_database_without_such_rows_ends_with_the_constraint_validated(
    database_before: tuple[str, Database],
) -> None:
    dsn, db = database_before
    await _dispatch(OutboxStore(db), "proper", "rtx-1")
    await migrate(dsn)
    assert await _validated(dsn) is True
