"""A DISPATCHED ledger row needs the rail's transaction id, whoever writes it (issue 14, item 3).

Failed on main: every writer below recorded DISPATCHED with rail_transaction_id NULL, empty or
blank (the lookup path did so for a rail answering 200 {"status": "EXECUTED"}). Now the
database refuses it as the runtime role (`payment_outbox_attempts_dispatched_transaction_id`,
translated to DISPATCHED_WITHOUT_TRANSACTION_ID) and writes nothing: the item stays leased
or under review, open and visible. The worker's end-to-end case (bare 503, then the bare
lookup) is in test_executor_worker.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import pytest
from tests.support.database import unique
from tests.support.outbox import instruction

from symphony.db import Database, InvariantViolationError, Role, SymphonyError, test_only
from symphony.outbox import (
    BucketRange,
    ClaimedItem,
    Completion,
    OutboxStore,
    Outcome,
    ReviewDecision,
)

CODE = "DISPATCHED_WITHOUT_TRANSACTION_ID"
# What the database refuses (the rail client refuses more: see test_rail_http_client.py).
# A longer id is refused too (see the owner's test); the completion functions cut what they
# are given to 200 characters first, as they always did (the rail client never sends more).
REFUSED = [None, "", " ", "\t\n", "rtx-\x01", "rtx-\x1b[31m", "rtx-\x7f", "rtx-\x9b"]
REFUSED_IDS = ["null", "empty", "space", "whitespace", "soh", "escape", "del", "c1"]


@pytest.fixture
async def policy(isolated_admin_dsn: str) -> AsyncIterator[str]:
    """A two-attempt ceiling with no backoff and no settle time; defaults restored after."""
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.outbox_retry_policy SET max_attempts = 2, backoff_base_ms = 0, "
        "backoff_max_ms = 0, ambiguous_settle_ms = 0")
    yield isolated_admin_dsn
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.outbox_retry_policy SET max_attempts = 8, backoff_base_ms = 1000, "
        "backoff_max_ms = 300000, ambiguous_settle_ms = 30000")


async def _claim(store: OutboxStore, outbox_id: UUID) -> ClaimedItem:
    mine = [c for c in await store.claim(unique("w"), 1000, 60) if c.outbox_id == outbox_id]
    assert len(mine) == 1, "the item is due and claimable"
    return mine[0]


async def _rows(admin_dsn: str, outbox_id: UUID) -> list[tuple[str, str | None]]:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT state::text AS s, rail_transaction_id AS tx "
                   "  FROM symphony.payment_outbox_attempts "
                   " WHERE outbox_id = %s ORDER BY attempt_no", (outbox_id,))
    return [(r["s"], r["tx"]) for r in rows]


async def _leased(admin_dsn: str, outbox_id: UUID) -> bool:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT lease_token IS NOT NULL AS leased "
                   "  FROM symphony.payment_outbox_pending WHERE outbox_id = %s", (outbox_id,))
    return bool(rows and rows[0]["leased"])


async def _claimed_item(store: OutboxStore) -> ClaimedItem:
    outbox_id = (await store.enqueue(instruction())).outbox_id
    return await _claim(store, outbox_id)


def _dispatched(item: ClaimedItem, transaction_id: str | None) -> Completion:
    return Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                      rail_transaction_id=transaction_id)


async def _assert_refused_and_untouched(
    admin_dsn: str, item: ClaimedItem, error: SymphonyError
) -> None:
    assert isinstance(error, InvariantViolationError)
    assert error.code == CODE
    assert error.sqlstate == "23514"
    assert await _rows(admin_dsn, item.outbox_id) == [("DISPATCHING", None)]
    assert await _leased(admin_dsn, item.outbox_id), "the item stays leased: open, visible"


@pytest.mark.parametrize("transaction_id", REFUSED, ids=REFUSED_IDS)
async def test_single_completion_refuses_dispatched_without_transaction_id(
    isolated_db: Database, isolated_admin_dsn: str, transaction_id: str | None,
) -> None:
    store = OutboxStore(isolated_db)
    item = await _claimed_item(store)
    with pytest.raises(SymphonyError) as info:
        await store.complete(_dispatched(item, transaction_id))  # complete_outbox_attempt
    await _assert_refused_and_untouched(isolated_admin_dsn, item, info.value)


@pytest.mark.parametrize("transaction_id", REFUSED, ids=REFUSED_IDS)
async def test_batch_completion_refuses_dispatched_without_transaction_id(
    isolated_db: Database, isolated_admin_dsn: str, transaction_id: str | None,
) -> None:
    store = OutboxStore(isolated_db)
    good, bad = await _claimed_item(store), await _claimed_item(store)
    with pytest.raises(SymphonyError) as info:
        await store.complete_batch([_dispatched(good, "rtx-good"),
                                    _dispatched(bad, transaction_id)])
    await _assert_refused_and_untouched(isolated_admin_dsn, bad, info.value)
    # One statement: its neighbour is not half-written either (the worker then records the
    # outcomes one by one).
    assert await _rows(isolated_admin_dsn, good.outbox_id) == [("DISPATCHING", None)]


@pytest.mark.parametrize("transaction_id", [None, "", "   "], ids=["null", "empty", "blank"])
async def test_bucket_completion_refuses_dispatched_without_transaction_id(
    isolated_db: Database, isolated_admin_dsn: str, transaction_id: str | None,
) -> None:
    store = OutboxStore(isolated_db)
    item = await _claimed_item(store)
    with pytest.raises(SymphonyError) as info:
        await store.complete_batch([_dispatched(item, transaction_id)],
                                   buckets=BucketRange.all())
    await _assert_refused_and_untouched(isolated_admin_dsn, item, info.value)


@pytest.mark.parametrize("transaction_id", [None, "", "   "], ids=["null", "empty", "blank"])
async def test_lookup_confirmation_refuses_dispatched_without_transaction_id(
    isolated_db: Database, policy: str, transaction_id: str | None,
) -> None:
    # The lookup path: an item whose attempt was ambiguous, confirmed "EXECUTED" on the next.
    store = OutboxStore(isolated_db)
    first = await _claimed_item(store)
    await store.complete(Completion(first.outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_UNCONFIRMED_503", ambiguous=True))
    second = await _claim(store, first.outbox_id)
    assert second.needs_lookup
    with pytest.raises(SymphonyError) as info:
        await store.complete(Completion(second.outbox_id, second.lease_token,
                                        Outcome.DISPATCHED, error_detail="confirmed by lookup",
                                        rail_transaction_id=transaction_id))
    assert info.value.code == CODE
    assert await _rows(policy, first.outbox_id) == [
        ("DISPATCHING", None), ("RETRYABLE", None), ("DISPATCHING", None)]
    assert await _leased(policy, first.outbox_id)


async def test_a_good_transaction_id_is_recorded_unchanged(
    isolated_db: Database, isolated_admin_dsn: str,
) -> None:
    store = OutboxStore(isolated_db)
    items = [await _claimed_item(store) for _ in range(3)]
    ids = ["rtx-1", "TX 2026/12/05:000123 Überweisung", "r" * 200]
    results = await store.complete_batch([_dispatched(i, t) for i, t in zip(items, ids,
                                                                             strict=True)])
    assert [r.state for r in results] == ["DISPATCHED"] * 3
    for item, transaction_id in zip(items, ids, strict=True):
        assert (await _rows(isolated_admin_dsn, item.outbox_id))[-1] == (
            "DISPATCHED", transaction_id)


async def _under_review(store: OutboxStore) -> UUID:
    """An item timed out once, then declined: unsettled at the two-attempt ceiling."""
    first = await _claimed_item(store)
    await store.complete(Completion(first.outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    second = await _claim(store, first.outbox_id)
    await store.complete(Completion(second.outbox_id, second.lease_token, Outcome.FAILED,
                                    error_code="DECLINED"))
    return first.outbox_id


@pytest.mark.parametrize("transaction_id", [None, "", "   ", "rtx-\x01"],
                         ids=["null", "empty", "blank", "control"])
async def test_review_resolution_refuses_dispatched_without_transaction_id(
    isolated_db: Database, policy: str, transaction_id: str | None,
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store)
    before = await _rows(policy, outbox_id)
    with pytest.raises(SymphonyError) as info:
        await store.resolve_review(outbox_id, ReviewDecision.DISPATCHED, decided_by="alice",
                                   reason="the rail says so", rail_transaction_id=transaction_id)
    # resolve_outbox_review's own, stricter check (printable ASCII) answers first.
    assert info.value.code == "INVALID_REVIEW_DECISION"
    assert await _rows(policy, outbox_id) == before
    assert [r.outbox_id for r in await store.review_queue() if r.outbox_id == outbox_id]


@pytest.mark.parametrize("transaction_id", [None, "", "x" * 201], ids=["null", "empty", "long"])
async def test_the_owner_itself_cannot_write_dispatched_without_transaction_id(
    isolated_db: Database, isolated_admin_dsn: str, transaction_id: str | None,
) -> None:
    # Whatever path writes the row: the rule is the table's, not the functions'.
    store = OutboxStore(isolated_db)
    item = await _claimed_item(store)
    with pytest.raises(SymphonyError) as info:
        await test_only.query_as_owner(
            isolated_admin_dsn,
            "INSERT INTO symphony.payment_outbox_attempts "
            "  (outbox_id, attempt_no, state, worker_id, lease_token, rail_transaction_id) "
            "VALUES (%s, 2, 'DISPATCHED', 'owner', %s, %s)",
            (item.outbox_id, item.lease_token, transaction_id))
    assert info.value.code == CODE


async def test_the_constraint_is_validated_on_a_fresh_database(isolated_admin_dsn: str) -> None:
    rows = await test_only.query_no_role(
        isolated_admin_dsn,
        "SELECT convalidated FROM pg_constraint "
        " WHERE conname = 'payment_outbox_attempts_dispatched_transaction_id' "
        "   AND conrelid = 'symphony.payment_outbox_attempts'::regclass")
    assert rows == [{"convalidated": True}]


async def test_executor_role_is_refused_by_the_table_not_by_a_missing_privilege(
    isolated_db: Database,
) -> None:
    # The refusal is the constraint's, as the runtime role, through the real function.
    store = OutboxStore(isolated_db)
    item = await _claimed_item(store)
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(
            isolated_db, Role.EXECUTOR,
            "SELECT * FROM symphony.complete_outbox_attempt(%s, %s, 'DISPATCHED', NULL, NULL, "
            "false, '')", (item.outbox_id, item.lease_token))
    assert info.value.code == CODE
