"""Deterministic proof of zombie repair (plan, phase 4).

No sleeps and no wall-clock luck: the item is really claimed (so its DISPATCHING row is in the
ledger), then its lease and claim time are moved into the past through the test-only helper,
and the repair worker runs exactly one cycle. The whole proof runs 50 times in a row.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from tests.support.database import make_due
from tests.support.outbox import instruction

from symphony.db import ConfigurationError, Database, test_only
from symphony.outbox import Completion, OutboxStore, Outcome
from symphony.repair import ZombieRepairConfig, ZombieRepairWorker, zombie_threshold_from_env

THRESHOLD = 90
REPETITIONS = 50


async def _pending_rows(admin_dsn: str, outbox_id: UUID) -> list[dict[str, Any]]:
    return await test_only.query_no_role(
        admin_dsn,
        "SELECT outbox_id, attempt_count, last_attempt_no, lease_token, claimed_by, "
        "       lease_expires_at, claimed_at, needs_lookup, next_attempt_at <= now() AS due, "
        "       extract(epoch FROM next_attempt_at - updated_at)::float AS settles_in "
        "  FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (outbox_id,),
    )


async def _ledger(admin_dsn: str, outbox_id: UUID) -> list[dict[str, Any]]:
    return await test_only.query_no_role(
        admin_dsn,
        "SELECT outbox_id, attempt_no, state::text AS state, worker_id "
        "  FROM symphony.payment_outbox_attempts WHERE outbox_id = %s ORDER BY attempt_no",
        (outbox_id,),
    )


async def _make_stale(admin_dsn: str, outbox_id: UUID, seconds_past_threshold: int) -> None:
    """Move the claim and its lease into the past, beyond the zombie threshold."""
    await test_only.query_no_role(
        admin_dsn,
        "UPDATE symphony.payment_outbox_pending "
        "   SET claimed_at = now() - make_interval(secs => %(age)s), "
        "       lease_expires_at = now() - make_interval(secs => %(past)s) "
        " WHERE outbox_id = %(id)s",
        {"age": THRESHOLD + seconds_past_threshold, "past": seconds_past_threshold,
         "id": outbox_id},
    )


@pytest.fixture
def repair_worker(
    isolated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> ZombieRepairWorker:
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", str(THRESHOLD))
    worker = ZombieRepairWorker(OutboxStore(isolated_db))
    assert worker.config.threshold_seconds == THRESHOLD  # read from the environment
    return worker


async def test_zombie_repair_proof_repeated(
    isolated_db: Database, isolated_admin_dsn: str, repair_worker: ZombieRepairWorker
) -> None:
    store = OutboxStore(isolated_db)
    for repetition in range(REPETITIONS):
        await _prove_once(store, isolated_admin_dsn, repair_worker, repetition)


async def _prove_once(
    store: OutboxStore, admin_dsn: str, worker: ZombieRepairWorker, repetition: int
) -> None:
    enqueued = await store.enqueue(instruction())
    claimed = await store.claim(f"worker-that-dies-{repetition}", 100, THRESHOLD)
    assert [c.outbox_id for c in claimed] == [enqueued.outbox_id]
    outbox_id = enqueued.outbox_id
    await _make_stale(admin_dsn, outbox_id, seconds_past_threshold=1 + repetition % 7)

    before_pending = await _pending_rows(admin_dsn, outbox_id)
    before_ledger = await _ledger(admin_dsn, outbox_id)
    assert [r["state"] for r in before_ledger] == ["DISPATCHING"]
    assert await worker.zombie_count() == 1

    result = await worker.run_once()

    # The repair names exactly the stale item.
    assert [r.outbox_id for r in result.repaired] == [outbox_id]
    ledger = await _ledger(admin_dsn, outbox_id)
    # A ZOMBIE_REQUEUE row is appended, for the same outbox_id, continuing the history.
    assert [r["state"] for r in ledger] == ["DISPATCHING", "ZOMBIE_REQUEUE"]
    assert all(r["outbox_id"] == outbox_id for r in ledger)
    assert ledger[-1]["worker_id"] == f"worker-that-dies-{repetition}"
    # attempt_no is monotonic: 1, 2, ... without gaps.
    assert [r["attempt_no"] for r in ledger] == list(range(1, len(ledger) + 1))
    # The pending row is requeued under the same outbox_id: one row, lease cleared, flagged
    # for a rail lookup before any re-send, which waits the settle time (the dead worker's
    # call may still be on its way to the rail).
    pending = await _pending_rows(admin_dsn, outbox_id)
    assert len(pending) == 1, "no duplicate pending rows"
    row = pending[0]
    assert row["outbox_id"] == outbox_id
    assert row["lease_token"] is None and row["claimed_by"] is None
    assert row["lease_expires_at"] is None and row["claimed_at"] is None
    assert not row["due"] and row["needs_lookup"]
    assert 29 <= row["settles_in"] <= 31
    # attempt_count never decreases; last_attempt_no follows the ledger.
    assert row["attempt_count"] >= before_pending[0]["attempt_count"]
    assert row["last_attempt_no"] == ledger[-1]["attempt_no"]
    assert await worker.zombie_count() == 0

    # A second cycle finds nothing and appends nothing.
    again = await worker.run_once()
    assert again.count == 0
    assert await _ledger(admin_dsn, outbox_id) == ledger
    assert await _pending_rows(admin_dsn, outbox_id) == pending

    # The item lives on: once the settle time has passed (moved in the database), the next
    # claim continues the same history, and finishes it.
    await make_due(admin_dsn, outbox_id)
    reclaimed = await store.claim("healthy-worker", 100, THRESHOLD)
    assert [c.outbox_id for c in reclaimed] == [outbox_id]
    assert reclaimed[0].needs_lookup and reclaimed[0].attempt_no == 3
    assert reclaimed[0].attempt_count == 2
    done = await store.complete(Completion(outbox_id, reclaimed[0].lease_token,
                                           Outcome.DISPATCHED, rail_transaction_id="rtx-test"))
    assert done.state == "DISPATCHED"
    final = await _ledger(admin_dsn, outbox_id)
    assert [r["state"] for r in final] == [
        "DISPATCHING", "ZOMBIE_REQUEUE", "DISPATCHING", "DISPATCHED"]
    assert await _pending_rows(admin_dsn, outbox_id) == []


async def test_live_lease_is_not_repaired(
    isolated_db: Database, isolated_admin_dsn: str, repair_worker: ZombieRepairWorker
) -> None:
    store = OutboxStore(isolated_db)
    enqueued = await store.enqueue(instruction())
    claimed = await store.claim("live-worker", 100, THRESHOLD)
    assert [c.outbox_id for c in claimed] == [enqueued.outbox_id]
    result = await repair_worker.run_once()
    assert result.count == 0
    ledger = await _ledger(isolated_admin_dsn, enqueued.outbox_id)
    assert [r["state"] for r in ledger] == ["DISPATCHING"]
    await store.complete(Completion(enqueued.outbox_id, claimed[0].lease_token,
                                    Outcome.DISPATCHED, rail_transaction_id="rtx-test"))


async def test_live_lease_is_never_taken_whatever_the_threshold(
    isolated_db: Database, isolated_admin_dsn: str, repair_worker: ZombieRepairWorker
) -> None:
    # A lease granted for longer than this repair's threshold is still its holder's until it
    # expires: a repair process with a shorter threshold must not requeue a live dispatch.
    store = OutboxStore(isolated_db)
    enqueued = await store.enqueue(instruction())
    # The longest lease the database grants: its zombie threshold (120 s by default).
    claimed = await store.claim("long-lease-worker", 100, 120)
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.payment_outbox_pending "
        "   SET claimed_at = now() - make_interval(secs => %s) WHERE outbox_id = %s",
        (THRESHOLD + 1, enqueued.outbox_id),
    )
    assert (await repair_worker.run_once()).count == 0
    # Once the lease expires, the repair takes it.
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.payment_outbox_pending "
        "   SET lease_expires_at = now() - interval '1 second' WHERE outbox_id = %s",
        (enqueued.outbox_id,),
    )
    result = await repair_worker.run_once()
    assert [r.outbox_id for r in result.repaired] == [enqueued.outbox_id]
    assert claimed and claimed[0].outbox_id == enqueued.outbox_id
    await make_due(isolated_admin_dsn, enqueued.outbox_id)
    for item in await store.claim("cleanup", 100, THRESHOLD):
        await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                        rail_transaction_id="rtx-test"))


async def test_expired_lease_younger_than_the_threshold_waits(
    isolated_db: Database, isolated_admin_dsn: str, repair_worker: ZombieRepairWorker
) -> None:
    # A repair started with a longer threshold than the workers' lease only waits longer.
    store = OutboxStore(isolated_db)
    enqueued = await store.enqueue(instruction())
    await store.claim("short-lease-worker", 100, 5)
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.payment_outbox_pending "
        "   SET lease_expires_at = now() - interval '1 second', "
        "       claimed_at = now() - interval '6 seconds' WHERE outbox_id = %s",
        (enqueued.outbox_id,),
    )
    assert (await repair_worker.run_once()).count == 0
    await _make_stale(isolated_admin_dsn, enqueued.outbox_id, 1)
    assert [r.outbox_id for r in (await repair_worker.run_once()).repaired] == [
        enqueued.outbox_id]
    await make_due(isolated_admin_dsn, enqueued.outbox_id)
    for item in await store.claim("cleanup", 100, THRESHOLD):
        await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                        rail_transaction_id="rtx-test"))


async def test_repair_is_bounded_by_batch_size(
    isolated_db: Database, isolated_admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OutboxStore(isolated_db)
    ids = [(await store.enqueue(instruction())).outbox_id for _ in range(5)]
    await store.claim("dies-with-five", 100, THRESHOLD)
    for outbox_id in ids:
        await _make_stale(isolated_admin_dsn, outbox_id, 5)
    worker = ZombieRepairWorker(store, ZombieRepairConfig(threshold_seconds=THRESHOLD,
                                                          batch_size=2))
    first = await worker.run_once()
    assert first.count == 2 and first.more_pending
    second = await worker.run_once()
    third = await worker.run_once()
    assert (second.count, third.count) == (2, 1)
    assert not third.more_pending
    repaired = {r.outbox_id for r in first.repaired + second.repaired + third.repaired}
    assert repaired == set(ids)
    # Leave the module's queue empty for the tests after this one.
    await make_due(isolated_admin_dsn, *ids)
    for item in await store.claim("cleanup", 100, THRESHOLD):
        await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                        rail_transaction_id="rtx-test"))


@pytest.mark.parametrize("raw", ["0", "-5", "abc", "1.5", "86401"])
def test_invalid_zombie_threshold_is_a_start_up_error(raw: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        zombie_threshold_from_env({"ZOMBIE_THRESHOLD_SECONDS": raw})
    assert info.value.code == "INVALID_ZOMBIE_THRESHOLD"
    assert raw in info.value.message or "between" in info.value.message


def test_zombie_threshold_defaults_to_120() -> None:
    assert zombie_threshold_from_env({}) == 120


def test_threshold_is_read_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "0")
    with pytest.raises(ConfigurationError):
        ZombieRepairConfig()
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "33")
    assert ZombieRepairConfig().threshold_seconds == 33
