"""The tamper-evident ledger's migration on a database in use: items in every state, written by
the real functions before it, get digests chained exactly as the triggers would have sealed
them, pending items that need a lookup get their mark, the append-only triggers are enabled
ALWAYS again, and the whole audit passes right after the migration."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from symphony.db import Database, DatabaseSettings, migrate, test_only
from symphony.db.migration import load_migrations
from symphony.outbox import (
    AccessStore,
    AuditStore,
    Completion,
    OutboxStore,
    Outcome,
    PaymentInstruction,
    verify,
)


def _version_before_tamper_evidence() -> int:
    """The migration this one follows, found by name (numbers may change on merge)."""
    [ours] = [m for m in load_migrations() if m.name.endswith("_tamper_evident_ledger.sql")]
    return ours.version - 1


@pytest.fixture
async def database_before(
    server_admin_dsn: str, symphony_home: Path
) -> AsyncIterator[tuple[str, Database]]:
    name = f"symphony_mig_te_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    await migrate(dsn, up_to=_version_before_tamper_evidence())
    db = await Database.open(
        DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(symphony_home)),
        require_migrated=False,
    )
    try:
        yield dsn, db
    finally:
        await db.close()
        await test_only.drop_database(server_admin_dsn, name)


def _instruction(n: int) -> PaymentInstruction:
    return PaymentInstruction(
        instruction_id=f"mig-te-{n}", idempotency_key=f"key-{n}", participant_id="mig-te",
        rail_type="RTP",
        payload={"amount": "10.00", "currency": "USD", "destination": f"acct-{n}"})


async def test_existing_history_is_sealed_and_audits_clean(
    database_before: tuple[str, Database],
) -> None:
    dsn, db = database_before
    await AccessStore(db).add_participant("mig-te", "migration test")
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET backoff_base_ms = 3600000, "
             "backoff_max_ms = 3600000")
    store = OutboxStore(db)
    ids = [(await store.enqueue(_instruction(n))).outbox_id for n in range(5)]
    dispatched, failed, retrying, ambiguous, retried = ids
    claimed = {c.outbox_id: c for c in await store.claim("mig-w", 10, 60)}
    await store.complete_batch([
        Completion(dispatched, claimed[dispatched].lease_token, Outcome.DISPATCHED,
                   rail_transaction_id="rtx-1"),
        Completion(failed, claimed[failed].lease_token, Outcome.FAILED, error_code="DECLINED"),
        Completion(retrying, claimed[retrying].lease_token, Outcome.RETRYABLE),
        Completion(ambiguous, claimed[ambiguous].lease_token, Outcome.RETRYABLE,
                   error_code="RAIL_TIMEOUT", ambiguous=True),
        Completion(retried, claimed[retried].lease_token, Outcome.RETRYABLE),
    ])
    await test_only.query_no_role(
        dsn, "UPDATE symphony.payment_outbox_pending SET next_attempt_at = now() "
             " WHERE outbox_id = %s", (retried,))
    [again] = await store.claim("mig-w2", 10, 60)
    await store.complete(Completion(retried, again.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-2"))

    report = await migrate(dsn)
    assert report.applied and report.applied[-1] == load_migrations()[-1].name

    rows = await test_only.query_no_role(
        dsn, "SELECT count(*) AS n, count(row_digest) AS sealed, count(lease_digest) AS leases "
             "  FROM symphony.payment_outbox_attempts")
    assert rows == [{"n": 12, "sealed": 12, "leases": 12}]
    marks = await test_only.query_no_role(
        dsn, "SELECT outbox_id, attempt_no, reason FROM symphony.outbox_lookup_marks")
    assert marks == [{"outbox_id": ambiguous, "attempt_no": 2, "reason": "BACKFILL"}]
    triggers = await test_only.query_no_role(
        dsn, "SELECT tgname, tgenabled FROM pg_trigger "
             " WHERE tgname IN ('payment_outbox_attempts_append_only', "
             "                  'payment_instruction_registry_append_only') ORDER BY tgname")
    assert [t["tgenabled"] for t in triggers] == ["A", "A"]

    # Sealed as the triggers seal: the audit recomputes every chain; new rows continue them.
    migrated = await Database.open(db.settings)
    try:
        audit = await verify(migrated)
        assert audit.ok, [c.as_dict() for c in audit.failed()]
        await AuditStore(migrated).checkpoint()
        claimed_after = await OutboxStore(migrated).claim("mig-w3", 10, 60)
        assert claimed_after == []  # nothing due yet: retries wait an hour
        await test_only.query_no_role(
            dsn, "UPDATE symphony.payment_outbox_pending SET next_attempt_at = now() "
                 " WHERE outbox_id = %s", (retrying,))
        [item] = await OutboxStore(migrated).claim("mig-w3", 10, 60)
        await OutboxStore(migrated).complete(Completion(
            item.outbox_id, item.lease_token, Outcome.DISPATCHED, rail_transaction_id="rtx-3"))
        assert (await verify(migrated)).ok
    finally:
        await migrated.close()
