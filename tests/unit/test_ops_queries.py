"""The operator's read queries (OutboxStore): failures, throughput, one item, metrics.

Each test module has its own database (`isolated_db`), so counts here are exact; histories at
chosen times are written through the ledger's rules (tests/support/ops.py), never waited for.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest
from tests.support.ops import database_now, ended_item
from tests.support.outbox import instruction

from symphony.db import Database, InvalidRequestError, Role, test_only
from symphony.outbox import OutboxStore
from symphony.outbox.store import MAX_FAILURES_LIMIT, MAX_THROUGHPUT_MINUTES


def _minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


async def test_recent_failures_are_newest_first_with_their_errors(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    # Far in the future of every other test of this module, so they are the newest.
    ids = []
    for n, minutes in enumerate((10, 20, 30)):
        ids.append(await ended_item(
            store, isolated_admin_dsn, "FAILED", now + timedelta(days=1, minutes=minutes),
            error_code=f"CODE_{n}", error_detail=f"detail {n}",
        ))
    await ended_item(store, isolated_admin_dsn, "DISPATCHED", now + timedelta(days=2))

    rows = await store.recent_failures(2)

    assert [r["outbox_id"] for r in rows] == [ids[2], ids[1]]
    assert [(r["error_code"], r["error_detail"], r["attempt_no"]) for r in rows] == [
        ("CODE_2", "detail 2", 2), ("CODE_1", "detail 1", 2)]
    assert rows[0]["failed_at"] > rows[1]["failed_at"]
    assert {"participant_id", "instruction_id", "rail_type", "worker_id"} <= set(rows[0])


@pytest.mark.parametrize("limit", [0, -1, MAX_FAILURES_LIMIT + 1, True])
async def test_recent_failures_refuse_an_unbounded_limit(isolated_db: Database, limit: int) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await OutboxStore(isolated_db).recent_failures(limit)
    assert caught.value.code == "INVALID_LIMIT"


async def test_throughput_counts_items_that_ended_per_minute(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    # Minutes no other test of this module writes to: 100 and 102 minutes ago.
    at_102 = _minute(now) - timedelta(minutes=102) + timedelta(seconds=30)
    at_100 = _minute(now) - timedelta(minutes=100) + timedelta(seconds=30)
    for state, at in [("DISPATCHED", at_102), ("DISPATCHED", at_102), ("FAILED", at_102),
                      ("DISPATCHED", at_100)]:
        await ended_item(store, isolated_admin_dsn, state, at)

    buckets = await store.throughput(120)

    assert len(buckets) == 120
    minutes = [b["minute"] for b in buckets]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(minutes))
    assert minutes[-1] in (_minute(now), _minute(now) + timedelta(minutes=1))
    by_minute = {b["minute"]: (b["dispatched"], b["failed"]) for b in buckets}
    assert by_minute[_minute(at_102)] == (2, 1)
    assert by_minute[_minute(at_100)] == (1, 0)
    assert by_minute[_minute(at_100) - timedelta(minutes=1)] == (0, 0)


async def test_throughput_leaves_out_what_ended_before_the_window(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    await ended_item(store, isolated_admin_dsn, "DISPATCHED", now - timedelta(minutes=230))
    buckets = await store.throughput(5)
    assert len(buckets) == 5
    assert buckets[0]["minute"] >= _minute(now) - timedelta(minutes=4)


@pytest.mark.parametrize("minutes", [0, -5, MAX_THROUGHPUT_MINUTES + 1, False])
async def test_throughput_refuses_an_unbounded_window(isolated_db: Database, minutes: int) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await OutboxStore(isolated_db).throughput(minutes)
    assert caught.value.code == "INVALID_WINDOW"


async def test_item_with_ledger_reads_both_from_one_snapshot(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    outbox_id = await ended_item(store, isolated_admin_dsn, "FAILED", now,
                                 error_code="INSUFFICIENT_FUNDS")
    found = await store.item_with_ledger(outbox_id)
    assert found is not None
    summary, ledger = found
    assert summary["outbox_id"] == outbox_id
    assert summary["terminal_state"] == "FAILED"
    assert summary["pending"] is False
    assert [(r["attempt_no"], r["state"]) for r in ledger] == [(1, "DISPATCHING"), (2, "FAILED")]
    assert ledger[1]["error_code"] == "INSUFFICIENT_FUNDS"


async def test_item_with_ledger_of_an_unknown_item_is_none(isolated_db: Database) -> None:
    assert await OutboxStore(isolated_db).item_with_ledger(uuid.uuid4()) is None


async def test_metrics_snapshot_matches_the_status_and_the_ledger(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    await ended_item(store, isolated_admin_dsn, "DISPATCHED", now)
    await store.enqueue(instruction())  # one pending, due

    snapshot = await store.metrics_snapshot(2000)
    status = await store.status()
    ledger = await test_only.query_no_role(
        isolated_admin_dsn,
        "SELECT state::text AS state FROM symphony.payment_outbox_attempts",
    )

    assert snapshot["ledger_rows_by_state"] == dict(Counter(r["state"] for r in ledger))
    for field in ("due", "scheduled", "dispatching", "zombies", "awaiting_lookup",
                  "pending_total", "dispatched_total", "failed_total"):
        assert snapshot[field] == getattr(status, field), field
    assert snapshot["due"] >= 1


async def test_the_scrape_timeout_is_set_for_its_transaction_only(isolated_db: Database) -> None:
    async with isolated_db.transaction(Role.READONLY) as tx:
        row = await tx.fetch_one("set_local_statement_timeout", {"timeout_ms": 1234})
        assert row is not None
        assert row["statement_timeout"] == "1234ms"
    async with isolated_db.transaction(Role.READONLY) as tx:
        again = await tx.fetch_one("set_local_statement_timeout", {"timeout_ms": 4321})
    assert again is not None
    assert again["statement_timeout"] == "4321ms"


@pytest.mark.parametrize("timeout_ms", [0, 60_001])
async def test_metrics_snapshot_refuses_an_unbounded_timeout(
    isolated_db: Database, timeout_ms: int
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await OutboxStore(isolated_db).metrics_snapshot(timeout_ms)
    assert caught.value.code == "INVALID_TIMEOUT"
