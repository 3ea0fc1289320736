"""Routing buckets: a worker given a bucket range claims, completes and repairs only items of
the participants in it, and a fleet of workers with disjoint ranges drains the whole queue,
each item dispatched and recorded exactly once.

Real ExecutorWorker instances against a real PostgreSQL and an in-process fake rail; each test
has a fresh database of its own, because a claim takes whatever is due.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import pytest
from tests.support.database import DatabaseFactory, unique
from tests.support.outbox import instruction, register_participant

from symphony.db import ConfigurationError, Database, InvalidRequestError, Role, test_only
from symphony.outbox import BUCKET_COUNT, BucketRange, Completion, OutboxStore, Outcome
from symphony.rails import DispatchOutcome, DispatchResult, LookupResult, LookupStatus
from symphony.services.worker import ExecutorWorker, WorkerConfig

PARTICIPANTS = 24
ITEMS_EACH = 5


@dataclass
class CountingRail:
    """A rail that accepts every payment and counts the calls per reference."""

    dispatched: Counter[str] = field(default_factory=Counter)

    async def dispatch(
        self, reference: str, *, rail_type: str, payload: Mapping[str, Any],
        timeout: float,  # noqa: ASYNC109 - the RailClient protocol
    ) -> DispatchResult:
        self.dispatched[reference] += 1
        await asyncio.sleep(0)  # let the other workers of the fleet interleave
        return DispatchResult(DispatchOutcome.SUCCESS, rail_transaction_id=f"tx-{reference}")

    async def lookup(self, reference: str, *, timeout: float) -> LookupResult:  # noqa: ASYNC109
        return LookupResult(LookupStatus.NOT_FOUND)

    async def aclose(self) -> None:
        return None


@dataclass
class Queue:
    db: Database
    store: OutboxStore
    admin_dsn: str
    bucket_of: dict[str, int]
    items: dict[UUID, str]  # outbox_id -> participant_id

    def in_range(self, buckets: BucketRange) -> set[UUID]:
        return {i for i, p in self.items.items() if self.bucket_of[p] in buckets}


def config(buckets: BucketRange | None, **overrides: Any) -> WorkerConfig:
    values: dict[str, Any] = {
        "worker_id": unique("fleet"), "lease_seconds": 60, "batch_size": 16,
        "dispatch_timeout_seconds": 2.0, "lookup_timeout_seconds": 1.0,
        "poll_interval_seconds": 30.0, "buckets": buckets,
    }
    values.update(overrides)
    return WorkerConfig(**values)


@pytest.fixture
async def queue(make_database: DatabaseFactory) -> AsyncIterator[Queue]:
    settings = await asyncio.to_thread(make_database)
    assert settings.database_url is not None
    admin_dsn = settings.database_url.get_secret_value()
    db = await Database.open(settings)
    try:
        store = OutboxStore(db)
        participants = [await register_participant(db) for _ in range(PARTICIPANTS)]
        buckets = await store.participant_buckets()
        items: dict[UUID, str] = {}
        for p in participants:
            for _ in range(ITEMS_EACH):
                items[(await store.enqueue(instruction(participant_id=p))).outbox_id] = p
        yield Queue(db, store, admin_dsn, buckets, items)
    finally:
        await db.close()


def _split(queue: Queue) -> BucketRange:
    """A range holding some of the queue's participants but not all of them."""
    used = sorted(set(queue.bucket_of[p] for p in queue.items.values()))
    assert len(used) >= 2, used
    return BucketRange(0, used[len(used) // 2 - 1])


async def test_buckets_are_stored_and_follow_the_participant(queue: Queue) -> None:
    rows = await test_only.query_no_role(
        queue.admin_dsn,
        "SELECT p.participant_id, p.bucket, "
        "       ((hashtext(p.participant_id)::bigint + 2147483648) >> 24)::int AS expected "
        "  FROM symphony.payment_outbox_pending p")
    assert len(rows) == len(queue.items)
    for r in rows:
        assert r["bucket"] == r["expected"] == queue.bucket_of[r["participant_id"]]
        assert 0 <= r["bucket"] < BUCKET_COUNT


async def test_a_worker_with_a_bucket_range_claims_only_from_it(queue: Queue) -> None:
    buckets = _split(queue)
    inside = queue.in_range(buckets)
    assert inside and inside != set(queue.items)
    rail = CountingRail()
    worker = ExecutorWorker(queue.store, rail, config(buckets))
    while (await worker.run_once()).claimed:
        pass
    assert set(rail.dispatched) == {str(i) for i in inside}
    left = await test_only.query_no_role(
        queue.admin_dsn,
        "SELECT p.outbox_id, p.attempt_count FROM symphony.payment_outbox_pending p")
    # Everything outside the range is still pending and untouched (never claimed).
    assert {r["outbox_id"] for r in left} == set(queue.items) - inside
    assert {r["attempt_count"] for r in left} == {0}


async def test_a_fleet_with_disjoint_ranges_drains_everything_exactly_once(
    queue: Queue,
) -> None:
    ranges = [BucketRange(0, 63), BucketRange(64, 127), BucketRange(128, 191),
              BucketRange(192, 255)]
    rail = CountingRail()
    workers = [ExecutorWorker(queue.store, rail, config(r)) for r in ranges]

    async def drain(worker: ExecutorWorker) -> None:
        while (await worker.run_once()).claimed:
            pass

    await asyncio.gather(*(drain(w) for w in workers))
    assert rail.dispatched == Counter({str(i): 1 for i in queue.items})
    assert await test_only.query_no_role(
        queue.admin_dsn, "SELECT outbox_id FROM symphony.payment_outbox_pending") == []
    ledger = await test_only.query_no_role(
        queue.admin_dsn,
        "SELECT a.outbox_id, a.participant_id, a.worker_id, "
        "       array_agg(a.state::text ORDER BY a.attempt_no) AS states "
        "  FROM symphony.payment_outbox_attempts a GROUP BY 1, 2, 3")
    assert len(ledger) == len(queue.items)
    by_worker = {w.config.worker_id: w.config.buckets for w in workers}
    for row in ledger:
        assert row["states"] == ["DISPATCHING", "DISPATCHED"]
        assert row["participant_id"] == queue.items[row["outbox_id"]]
        # Each item was claimed by the worker whose range holds its participant's bucket.
        assert queue.bucket_of[row["participant_id"]] in by_worker[row["worker_id"]]
    assert await queue.db.fetch_all(Role.AUDITOR, "audit_pending_mismatch", {"limit": 10}) == []


async def test_a_completion_outside_the_range_is_fenced_and_writes_nothing(
    queue: Queue,
) -> None:
    buckets = _split(queue)
    other = BucketRange(buckets.last + 1, BUCKET_COUNT - 1)
    [item] = await queue.store.claim(unique("w"), 1, 60, buckets=buckets)
    assert queue.bucket_of[item.participant_id] in buckets
    [fenced] = await queue.store.complete_batch(
        [Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                    rail_transaction_id="rtx-test")], buckets=other)
    assert fenced.fenced
    assert [r["state"] for r in await queue.store.ledger(item.outbox_id)] == ["DISPATCHING"]
    [done] = await queue.store.complete_batch(
        [Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                    rail_transaction_id="rtx-test")], buckets=buckets)
    assert not done.fenced and done.state == "DISPATCHED"


async def test_repair_of_a_bucket_range_requeues_only_its_zombies(queue: Queue) -> None:
    buckets = _split(queue)
    claimed = await queue.store.claim(unique("w"), 1000, 60)
    assert len(claimed) == len(queue.items)
    await test_only.query_no_role(
        queue.admin_dsn,
        "UPDATE symphony.payment_outbox_pending SET lease_expires_at = now() - interval '1 s'")
    repaired = await queue.store.repair_expired_leases(1000, buckets=buckets)
    assert {r.outbox_id for r in repaired} == queue.in_range(buckets)
    rest = await queue.store.repair_expired_leases(1000)
    assert {r.outbox_id for r in rest} == set(queue.items) - queue.in_range(buckets)


async def test_an_invalid_bucket_range_is_refused_with_its_code(queue: Queue) -> None:
    for query, params in (
        ("claim_outbox_batch_buckets",
         {"worker_id": "w", "batch_size": 1, "lease_seconds": 60}),
        ("repair_expired_leases_buckets", {"limit": 1, "threshold_seconds": None}),
    ):
        for low, high in ((5, 4), (-1, 3), (0, 256)):
            with pytest.raises(InvalidRequestError) as info:
                await queue.db.fetch_all(Role.EXECUTOR, query,
                                         {**params, "bucket_from": low, "bucket_to": high})
            assert info.value.code == "INVALID_BUCKET_RANGE"
            assert info.value.sqlstate == "SY026"


@pytest.mark.parametrize(("text", "expected"), [
    ("0-63", BucketRange(0, 63)), ("7", BucketRange(7, 7)), (" 0 - 255 ", BucketRange.all()),
])
def test_bucket_setting_parses(text: str, expected: BucketRange,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMPHONY_WORKER_BUCKETS", text)
    assert WorkerConfig.load(lease_seconds=60).buckets == expected


def test_bucket_setting_defaults_to_every_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYMPHONY_WORKER_BUCKETS", raising=False)
    assert WorkerConfig.load(lease_seconds=60).buckets is None


@pytest.mark.parametrize("text", ["63-0", "0-256", "a-b", "-3", "1-", "1-2-3"])
def test_a_bad_bucket_setting_stops_the_worker(text: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMPHONY_WORKER_BUCKETS", text)
    with pytest.raises(ConfigurationError) as info:
        WorkerConfig.load(lease_seconds=60)
    assert info.value.code == "INVALID_WORKER_CONFIG"
    assert "SYMPHONY_WORKER_BUCKETS" in str(info.value)
