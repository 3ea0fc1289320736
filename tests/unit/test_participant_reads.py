"""Idempotency scoped to the participant (I1), and the participant-scoped reads the API uses:
a participant sees its own payments, in their logical state, and nothing of anyone else's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from tests.support.database import make_due
from tests.support.outbox import instruction, payload, register_participant

from symphony.db import (
    Database,
    IdempotencyConflictError,
    InvalidRequestError,
    Role,
    test_only,
)
from symphony.outbox import Completion, OutboxStore, Outcome

# -- I1 per participant ----------------------------------------------------------------------


async def test_two_participants_may_use_the_same_pair(db: Database, admin_dsn: str) -> None:
    store = OutboxStore(db)
    alice, bob = await register_participant(db), await register_participant(db)
    theirs = instruction(participant_id=alice)
    mine = instruction(instruction_id=theirs.instruction_id,
                       idempotency_key=theirs.idempotency_key, participant_id=bob,
                       rail_type="ACH", payload=payload(amount="9.99"))
    a = await store.enqueue(theirs)
    b = await store.enqueue(mine)
    # Two items; bob's first use looks exactly like a first use (nothing tells him of alice's).
    assert a.created and b.created and a.outbox_id != b.outbox_id
    assert a.sequence_id == b.sequence_id == 1
    # Each replays to its own item.
    assert (await store.enqueue(theirs)).outbox_id == a.outbox_id
    assert (await store.enqueue(mine)).outbox_id == b.outbox_id
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT participant_id FROM symphony.payment_instruction_registry "
                   " WHERE instruction_id = %s ORDER BY participant_id", (theirs.instruction_id,))
    assert [r["participant_id"] for r in rows] == sorted([alice, bob])


async def test_same_participant_same_triple_other_payload_is_refused(db: Database) -> None:
    store = OutboxStore(db)
    original = instruction()
    await store.enqueue(original)
    changed = instruction(instruction_id=original.instruction_id,
                          idempotency_key=original.idempotency_key,
                          payload=payload(amount="1.00"))
    with pytest.raises(IdempotencyConflictError) as info:
        await store.enqueue(changed)
    assert (info.value.sqlstate, info.value.code) == ("SY100", "IDEMPOTENCY_KEY_REUSED")


async def test_replay_answers_the_original_created_at(db: Database) -> None:
    store = OutboxStore(db)
    original = instruction()
    first = await store.enqueue(original)
    again = await store.enqueue(original)
    assert not again.created
    assert (again.outbox_id, again.sequence_id, again.created_at) == (
        first.outbox_id, first.sequence_id, first.created_at)


# -- reads -----------------------------------------------------------------------------------


@pytest.fixture
async def reads_db(isolated_db: Database, isolated_admin_dsn: str) -> AsyncIterator[Database]:
    """The module's own database, with retries far away (a RETRYABLE item stays one)."""
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.outbox_retry_policy SET backoff_base_ms = 3600000, "
        "backoff_max_ms = 3600000, jitter_ratio = 0")
    yield isolated_db


async def _claim_only(store: OutboxStore, outbox_id: uuid.UUID) -> Completion:
    """Claim everything due (the module's queue) and return the lease of the one wanted."""
    claimed = await store.claim("reads-worker", 1000, 120)
    mine = [c for c in claimed if c.outbox_id == outbox_id]
    assert mine, "the item should have been due"
    others = [c for c in claimed if c.outbox_id != outbox_id]
    # Anything else that was due goes back to the queue through a retry.
    if others:
        await store.complete_batch([
            Completion(c.outbox_id, c.lease_token, Outcome.RETRYABLE, "TEST") for c in others])
    return Completion(mine[0].outbox_id, mine[0].lease_token, Outcome.DISPATCHED,
                      rail_transaction_id="rtx-test")


async def test_a_payment_reads_in_its_logical_state(reads_db: Database, isolated_admin_dsn: str
                                                   ) -> None:
    store = OutboxStore(reads_db)
    pid = await register_participant(reads_db)
    enq = await store.enqueue(instruction(participant_id=pid))

    pending = await store.payment_for(pid, enq.outbox_id)
    assert pending is not None
    assert (pending.state, pending.attempt_count, pending.terminal_at) == ("PENDING", 0, None)
    assert pending.created_at == enq.created_at == pending.updated_at
    assert pending.next_attempt_at is not None and pending.last_error_code is None

    lease = await _claim_only(store, enq.outbox_id)
    leased = await store.payment_for(pid, enq.outbox_id)
    assert leased is not None and (leased.state, leased.attempt_count) == ("DISPATCHING", 1)
    assert leased.updated_at > leased.created_at

    await store.complete(Completion(lease.outbox_id, lease.lease_token, Outcome.RETRYABLE,
                                    "RAIL_BUSY", "try later"))
    retry = await store.payment_for(pid, enq.outbox_id)
    assert retry is not None
    assert (retry.state, retry.last_error_code, retry.attempt_count) == (
        "RETRYABLE", "RAIL_BUSY", 1)
    assert retry.next_attempt_at is not None and retry.next_attempt_at > retry.updated_at

    # Due again; then the worker dies and its lease is repaired: PENDING, needs a lookup.
    await test_only.query_no_role(
        isolated_admin_dsn, "UPDATE symphony.payment_outbox_pending SET next_attempt_at = now()"
                            " WHERE outbox_id = %s", (enq.outbox_id,))
    lease = await _claim_only(store, enq.outbox_id)
    await test_only.query_no_role(
        isolated_admin_dsn, "UPDATE symphony.payment_outbox_pending "
                            "   SET lease_expires_at = now() - interval '1 second' "
                            " WHERE outbox_id = %s", (enq.outbox_id,))
    repaired = await store.repair_expired_leases(1000)
    assert enq.outbox_id in {r.outbox_id for r in repaired}
    zombie = await store.payment_for(pid, enq.outbox_id)
    assert zombie is not None
    assert (zombie.state, zombie.attempt_count, zombie.last_error_code) == (
        "PENDING", 2, "ZOMBIE_REQUEUE")

    # Its lookup waits the settle time after the repair: let it pass in the database.
    await make_due(isolated_admin_dsn, enq.outbox_id)
    lease = await _claim_only(store, enq.outbox_id)
    await store.complete(Completion(lease.outbox_id, lease.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rail-tx-1"))
    done = await store.payment_for(pid, enq.outbox_id)
    assert done is not None
    assert (done.state, done.attempt_count, done.next_attempt_at) == ("DISPATCHED", 3, None)
    assert done.terminal_at is not None and done.terminal_at == done.updated_at

    attempts = await store.attempts_for(pid, enq.outbox_id)
    assert [(a.attempt_no, a.state) for a in attempts] == [
        (1, "DISPATCHING"), (2, "RETRYABLE"), (3, "DISPATCHING"), (4, "ZOMBIE_REQUEUE"),
        (5, "DISPATCHING"), (6, "DISPATCHED")]
    assert attempts[1].error_code == "RAIL_BUSY" and attempts[1].error_detail == "try later"
    assert attempts[-1].rail_transaction_id == "rail-tx-1"
    # The zombie row's stored detail names the dead worker; the participant never sees it.
    assert all("reads-worker" not in (a.error_detail or "") for a in attempts)


async def test_failed_payment_reads_failed(reads_db: Database) -> None:
    store = OutboxStore(reads_db)
    pid = await register_participant(reads_db)
    enq = await store.enqueue(instruction(participant_id=pid))
    lease = await _claim_only(store, enq.outbox_id)
    await store.complete(Completion(lease.outbox_id, lease.lease_token, Outcome.FAILED,
                                    "ACCOUNT_CLOSED", "closed"))
    failed = await store.payment_for(pid, enq.outbox_id)
    assert failed is not None
    assert (failed.state, failed.last_error_code, failed.attempt_count) == (
        "FAILED", "ACCOUNT_CLOSED", 1)
    assert failed.next_attempt_at is None and failed.terminal_at is not None


async def test_another_participants_payment_is_invisible(db: Database) -> None:
    store = OutboxStore(db)
    alice, mallory = await register_participant(db), await register_participant(db)
    enq = await store.enqueue(instruction(participant_id=alice))
    assert await store.payment_for(alice, enq.outbox_id) is not None
    assert await store.payment_for(mallory, enq.outbox_id) is None
    assert await store.attempts_for(mallory, enq.outbox_id) == []
    assert await store.payments_for(mallory) == []
    assert [p.outbox_id for p in await store.payments_for(alice)] == [enq.outbox_id]
    # Another participant's item as a cursor is refused, not quietly treated as "the start".
    with pytest.raises(InvalidRequestError) as info:
        await store.payments_for(mallory, after=enq.outbox_id)
    assert (info.value.sqlstate, info.value.code) == ("SY031", "INVALID_CURSOR")


async def test_unknown_cursor_is_refused(db: Database) -> None:
    pid = await register_participant(db)
    with pytest.raises(InvalidRequestError) as info:
        await OutboxStore(db).payments_for(pid, after=uuid.uuid4())
    assert info.value.code == "INVALID_CURSOR"


async def test_payments_page_newest_first(db: Database) -> None:
    store = OutboxStore(db)
    pid = await register_participant(db)
    ids = [(await store.enqueue(instruction(participant_id=pid))).outbox_id for _ in range(5)]
    newest_first = list(reversed(ids))
    page1 = await store.payments_for(pid, limit=2)
    page2 = await store.payments_for(pid, after=page1[-1].outbox_id, limit=2)
    page3 = await store.payments_for(pid, after=page2[-1].outbox_id, limit=2)
    page4 = await store.payments_for(pid, after=page3[-1].outbox_id, limit=2)
    assert [p.outbox_id for p in page1 + page2 + page3] == newest_first
    assert len(page3) == 1 and page4 == []
    assert {p.state for p in page1} == {"PENDING"}
    assert await store.payments_for(pid, state="PENDING", limit=200) == await store.payments_for(
        pid, limit=200)
    assert await store.payments_for(pid, state="DISPATCHED") == []


@pytest.mark.parametrize("limit", [0, -1, 201])
async def test_page_size_is_bounded(db: Database, limit: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await OutboxStore(db).payments_for("participant-test", limit=limit)
    assert (info.value.sqlstate, info.value.code) == ("SY021", "INVALID_BATCH_SIZE")


@pytest.mark.parametrize("state", ["pending", "ZOMBIE_REQUEUE", "", "DISPATCHED;"])
async def test_unknown_state_filter_is_refused(db: Database, state: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await OutboxStore(db).payments_for("participant-test", state=state)
    assert (info.value.sqlstate, info.value.code) == ("SY032", "INVALID_STATE_FILTER")


async def test_reads_expose_no_worker_or_lease(db: Database) -> None:
    rows = await test_only.execute_as_role(
        db, Role.READONLY,
        "SELECT * FROM symphony.participant_payment_attempts('participant-test', "
        "       gen_random_uuid())")
    assert rows == []
    cols = await test_only.query_no_role(
        db.endpoint.admin_dsn,
        "SELECT p.proname, array_to_string(p.proargnames, ',') AS names "
        "  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        " WHERE n.nspname = 'symphony' AND p.proname LIKE 'participant_payment%%'")
    assert len(cols) == 3
    for row in cols:
        for hidden in ("worker", "lease", "sequence", "recorded_by", "claimed"):
            assert hidden not in row["names"], row
