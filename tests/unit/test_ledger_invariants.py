"""The database itself refuses what would break the ledger's invariants, each by SQLSTATE.

Rows are written here as the schema owner (or the admin), who holds every privilege on the
tables: what is refused is refused by the rules in the schema, not by missing grants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import pytest
from tests.support.outbox import instruction

from symphony.db import (
    Database,
    InvariantViolationError,
    LeaseFencedError,
    Role,
    SymphonyError,
    test_only,
)
from symphony.outbox import ClaimedItem, Completion, OutboxStore, Outcome, ReviewDecision


async def _claimed(store: OutboxStore) -> ClaimedItem:
    enqueued = await store.enqueue(instruction())
    claimed = await store.claim("invariant-test", 1000, 60)
    mine = [c for c in claimed if c.outbox_id == enqueued.outbox_id]
    assert len(mine) == 1
    return mine[0]


async def _ledger(admin_dsn: str, outbox_id: UUID) -> list[dict[str, Any]]:
    return await test_only.query_no_role(
        admin_dsn,
        "SELECT attempt_no, state::text AS state FROM symphony.payment_outbox_attempts "
        " WHERE outbox_id = %s ORDER BY attempt_no",
        (outbox_id,),
    )


async def _append(admin_dsn: str, outbox_id: UUID, attempt_no: int, state: str) -> None:
    # A DISPATCHED row carries a transaction id (its own rule, tested elsewhere), so each
    # test here meets the rule it is about.
    transaction_id = "rtx-append" if state == "DISPATCHED" else None
    await test_only.query_as_owner(
        admin_dsn,
        "INSERT INTO symphony.payment_outbox_attempts "
        "  (outbox_id, attempt_no, state, rail_transaction_id) VALUES (%s, %s, %s, %s)",
        (outbox_id, attempt_no, state, transaction_id),
    )


# -- I5: legal transitions only --------------------------------------------------------------


@pytest.mark.parametrize("first", ["DISPATCHED", "RETRYABLE", "FAILED", "ZOMBIE_REQUEUE"])
async def test_first_row_must_be_dispatching(isolated_db: Database, first: str) -> None:
    store = OutboxStore(isolated_db)
    enqueued = await store.enqueue(instruction())
    with pytest.raises(InvariantViolationError) as info:
        await _append(isolated_db.endpoint.admin_dsn, enqueued.outbox_id, 1, first)
    assert info.value.sqlstate == "SY300"
    assert info.value.code == "ILLEGAL_TRANSITION"


@pytest.mark.parametrize(
    ("history", "next_state"),
    [
        (["RETRYABLE"], "RETRYABLE"),
        (["RETRYABLE"], "DISPATCHED"),
        (["ZOMBIE_REQUEUE"], "FAILED"),
        ([], "DISPATCHING"),  # DISPATCHING after DISPATCHING
    ],
)
async def test_illegal_successor_is_refused(
    isolated_db: Database, history: list[str], next_state: str
) -> None:
    admin = isolated_db.endpoint.admin_dsn
    item = await _claimed(OutboxStore(isolated_db))
    for offset, state in enumerate(history, start=2):
        await _append(admin, item.outbox_id, offset, state)
    before = await _ledger(admin, item.outbox_id)
    with pytest.raises(InvariantViolationError) as info:
        await _append(admin, item.outbox_id, len(before) + 1, next_state)
    assert info.value.sqlstate == "SY300"
    assert await _ledger(admin, item.outbox_id) == before


async def test_nothing_follows_a_terminal_row(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.FAILED,
                                    error_code="ACCOUNT_CLOSED"))
    for state in ("DISPATCHING", "RETRYABLE", "ZOMBIE_REQUEUE"):
        with pytest.raises(InvariantViolationError) as info:
            await _append(admin, item.outbox_id, 3, state)
        assert info.value.sqlstate == "SY300"


# -- I4: attempt_no dense and increasing; counters never decrease ------------------------------


async def test_attempt_numbers_cannot_skip(isolated_db: Database) -> None:
    item = await _claimed(OutboxStore(isolated_db))
    with pytest.raises(InvariantViolationError) as info:
        await _append(isolated_db.endpoint.admin_dsn, item.outbox_id, 5, "RETRYABLE")
    assert info.value.sqlstate == "SY301"


async def test_attempt_count_cannot_decrease(isolated_db: Database) -> None:
    item = await _claimed(OutboxStore(isolated_db))
    with pytest.raises(InvariantViolationError) as info:
        await test_only.query_as_owner(
            isolated_db.endpoint.admin_dsn,
            "UPDATE symphony.payment_outbox_pending SET attempt_count = 0 WHERE outbox_id = %s",
            (item.outbox_id,),
        )
    assert info.value.sqlstate == "SY301"


# -- I6: one DISPATCHED, one terminal row -------------------------------------------------------


async def test_second_dispatched_is_refused(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-test"))
    with pytest.raises(InvariantViolationError) as info:
        await _append(admin, item.outbox_id, 3, "DISPATCHED")
    assert info.value.sqlstate == "SY300"
    # Even with the transition trigger out of the way, the unique index holds (23505).
    with pytest.raises(InvariantViolationError) as unique:
        await test_only.statements_no_role(admin, [
            ("ALTER TABLE symphony.payment_outbox_attempts "
             "DISABLE TRIGGER payment_outbox_attempts_legal_transition", None),
            ("INSERT INTO symphony.payment_outbox_attempts "
             "  (outbox_id, attempt_no, state, rail_transaction_id) "
             "VALUES (%s, 3, 'DISPATCHED', 'rtx-again')", (item.outbox_id,)),
        ])
    assert unique.value.sqlstate == "23505"
    assert unique.value.code == "DUPLICATE_DISPATCHED"
    rows = await _ledger(admin, item.outbox_id)
    assert [r["state"] for r in rows].count("DISPATCHED") == 1


async def test_second_terminal_row_is_refused_by_the_index(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.FAILED))
    with pytest.raises(InvariantViolationError) as info:
        await test_only.statements_no_role(admin, [
            ("ALTER TABLE symphony.payment_outbox_attempts "
             "DISABLE TRIGGER payment_outbox_attempts_legal_transition", None),
            ("INSERT INTO symphony.payment_outbox_attempts "
             "  (outbox_id, attempt_no, state, rail_transaction_id) "
             "VALUES (%s, 3, 'DISPATCHED', 'rtx-again')", (item.outbox_id,)),
        ])
    assert info.value.sqlstate == "23505"
    assert info.value.code == "DUPLICATE_TERMINAL"


async def test_completing_twice_is_fenced(isolated_db: Database) -> None:
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    done = Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                      rail_transaction_id="rtx-test")
    await store.complete(done)
    with pytest.raises(LeaseFencedError) as info:
        await store.complete(done)
    assert info.value.sqlstate == "SY200"


# -- I7: pending if and only if no terminal row ---------------------------------------------------


async def test_pending_row_cannot_vanish_without_a_terminal_row(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    item = await _claimed(OutboxStore(isolated_db))
    with pytest.raises(InvariantViolationError) as info:
        await test_only.query_as_owner(
            admin, "DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
            (item.outbox_id,),
        )
    assert info.value.sqlstate == "SY302"
    assert info.value.code == "PENDING_LEDGER_MISMATCH"


async def test_terminal_row_cannot_leave_the_item_pending(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    item = await _claimed(OutboxStore(isolated_db))
    with pytest.raises(InvariantViolationError) as info:
        await _append(admin, item.outbox_id, 2, "DISPATCHED")
    assert info.value.sqlstate == "SY302"
    assert [r["state"] for r in await _ledger(admin, item.outbox_id)] == ["DISPATCHING"]


# -- I9: lease fencing ----------------------------------------------------------------------------


async def test_stale_lease_token_is_refused_and_writes_nothing(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    before_ledger = await _ledger(admin, item.outbox_id)
    before_pending = await test_only.query_no_role(
        admin, "SELECT * FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (item.outbox_id,),
    )
    foreign = UUID("00000000-0000-4000-8000-000000000000")
    with pytest.raises(LeaseFencedError) as info:
        await store.complete(Completion(item.outbox_id, foreign, Outcome.DISPATCHED,
                                        rail_transaction_id="rtx-test"))
    assert info.value.sqlstate == "SY200"
    assert info.value.code == "LEASE_NOT_HELD"
    assert await _ledger(admin, item.outbox_id) == before_ledger
    assert await test_only.query_no_role(
        admin, "SELECT * FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (item.outbox_id,),
    ) == before_pending
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-test"))


async def test_lease_repaired_away_fences_the_old_holder(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    await test_only.query_no_role(
        admin,
        "UPDATE symphony.payment_outbox_pending SET lease_expires_at = now() - interval '1 s' "
        " WHERE outbox_id = %s",
        (item.outbox_id,),
    )
    repaired = await store.repair_expired_leases(100)
    assert item.outbox_id in {r.outbox_id for r in repaired}
    with pytest.raises(LeaseFencedError):
        await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                        rail_transaction_id="rtx-test"))
    assert [r["state"] for r in await _ledger(admin, item.outbox_id)] == [
        "DISPATCHING", "ZOMBIE_REQUEUE"]


async def test_batch_completion_fences_only_the_stale_item(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    good = await _claimed(store)
    stale = await _claimed(store)
    results = await store.complete_batch([
        Completion(good.outbox_id, good.lease_token, Outcome.DISPATCHED, rail_transaction_id="t1"),
        Completion(stale.outbox_id, good.lease_token, Outcome.DISPATCHED, rail_transaction_id="t2"),
    ])
    by_id = {r.outbox_id: r for r in results}
    assert not by_id[good.outbox_id].fenced and by_id[good.outbox_id].state == "DISPATCHED"
    assert by_id[stale.outbox_id].fenced and by_id[stale.outbox_id].state is None
    assert [r["state"] for r in await _ledger(admin, stale.outbox_id)] == ["DISPATCHING"]
    await store.complete(Completion(stale.outbox_id, stale.lease_token, Outcome.FAILED))


# -- retries ---------------------------------------------------------------------------------------


@asynccontextmanager
async def _retry_ceiling(admin_dsn: str, max_attempts: int) -> AsyncIterator[None]:
    """A retry policy with `max_attempts`, no backoff and no settle time, restored to the
    defaults after."""
    await test_only.query_no_role(
        admin_dsn, "UPDATE symphony.outbox_retry_policy SET max_attempts = %s, "
                   "backoff_base_ms = 0, backoff_max_ms = 0, ambiguous_settle_ms = 0",
        (max_attempts,))
    try:
        yield
    finally:
        await test_only.query_no_role(
            admin_dsn, "UPDATE symphony.outbox_retry_policy SET max_attempts = 8, "
                       "backoff_base_ms = 1000, backoff_max_ms = 300000, "
                       "ambiguous_settle_ms = 30000")


async def test_retry_past_the_ceiling_becomes_failed(isolated_db: Database) -> None:
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    async with _retry_ceiling(admin, 2):
        item = await _claimed(store)
        first = await store.complete(Completion(item.outbox_id, item.lease_token,
                                                Outcome.RETRYABLE, error_code="RAIL_UNAVAILABLE"))
        assert first.state == "RETRYABLE"
        again = [c for c in await store.claim("retry-test", 1000, 60)
                 if c.outbox_id == item.outbox_id]
        assert again and again[0].attempt_count == 2
        last = await store.complete(Completion(item.outbox_id, again[0].lease_token,
                                               Outcome.RETRYABLE, error_code="RAIL_UNAVAILABLE"))
        assert last.state == "FAILED"
        rows = await test_only.query_no_role(
            admin, "SELECT state::text AS s, error_code FROM symphony.payment_outbox_attempts "
                   " WHERE outbox_id = %s ORDER BY attempt_no", (item.outbox_id,))
        assert [r["s"] for r in rows] == ["DISPATCHING", "RETRYABLE", "DISPATCHING", "FAILED"]
        assert rows[-1]["error_code"] == "RETRY_LIMIT_EXCEEDED"


async def test_ambiguous_retry_past_the_ceiling_is_never_failed(isolated_db: Database) -> None:
    # A timeout may have moved the money: the ceiling must not declare it FAILED. It goes to
    # review instead, visible and no longer claimed, until the rail's outcome is recorded.
    admin = isolated_db.endpoint.admin_dsn
    store = OutboxStore(isolated_db)
    async with _retry_ceiling(admin, 2):
        item = await _claimed(store)
        result = await store.complete(Completion(item.outbox_id, item.lease_token,
                                                 Outcome.RETRYABLE, error_code="RAIL_TIMEOUT",
                                                 ambiguous=True))
        assert result.state == "RETRYABLE"
        status = await store.status(Role.READONLY)
        assert status.awaiting_lookup >= 1
        again = [c for c in await store.claim("ceiling-test", 1000, 60)
                 if c.outbox_id == item.outbox_id]
        assert again and again[0].needs_lookup
        # A later clean refusal proves nothing about the earlier call, which may still land:
        # at the ceiling the item is neither failed nor retried, but held for review.
        later = await store.complete(Completion(item.outbox_id, again[0].lease_token,
                                                Outcome.RETRYABLE, error_code="RAIL_UNAVAILABLE"))
        assert later.state == "RETRYABLE" and later.next_attempt_at is None
        assert not [c for c in await store.claim("ceiling-test", 1000, 60)
                    if c.outbox_id == item.outbox_id]
        queue = await store.review_queue()
        assert [r.review_reason for r in queue if r.outbox_id == item.outbox_id] == [
            "UNSETTLED_AT_RETRY_LIMIT"]
        assert (await store.status(Role.READONLY)).under_review >= 1
        # The rail's confirmation, recorded by an operator, settles it.
        done = await store.resolve_review(item.outbox_id, ReviewDecision.DISPATCHED,
                                          decided_by="oncall", reason="rail statement line 7",
                                          rail_transaction_id="rtx-1")
        assert done.state == "DISPATCHED"
        assert [r["s"] for r in await test_only.query_no_role(
            admin, "SELECT state::text AS s FROM symphony.payment_outbox_attempts "
                   " WHERE outbox_id = %s ORDER BY attempt_no", (item.outbox_id,))] == [
            "DISPATCHING", "RETRYABLE", "DISPATCHING", "RETRYABLE", "DISPATCHING", "DISPATCHED"]


async def test_ambiguous_outcome_cannot_be_recorded_as_failed(isolated_db: Database) -> None:
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    with pytest.raises(SymphonyError) as info:
        await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.FAILED,
                                        error_code="RAIL_TIMEOUT", ambiguous=True))
    assert info.value.sqlstate == "SY024"
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-test"))


async def test_retry_backoff_grows_and_is_bounded(isolated_db: Database) -> None:
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    result = await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.RETRYABLE,
                                             error_code="RAIL_UNAVAILABLE"))
    rows = await test_only.query_no_role(
        isolated_db.endpoint.admin_dsn,
        "SELECT extract(epoch FROM next_attempt_at - clock_timestamp()) AS wait, needs_lookup "
        "  FROM symphony.payment_outbox_pending WHERE outbox_id = %s", (item.outbox_id,))
    # attempt 1: base 1 s with up to 20 % jitter below it.
    assert 0.6 <= float(rows[0]["wait"]) <= 1.0
    assert rows[0]["needs_lookup"] is False
    assert result.next_attempt_at is not None


async def test_ambiguous_outcome_waits_the_settle_time_before_its_lookup(
    isolated_db: Database,
) -> None:
    # A lookup a second after a timeout proves little: the call may still be queued at the
    # rail. The next attempt waits the policy's settle time (30 s), not the 1 s backoff.
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    rows = await test_only.query_no_role(
        isolated_db.endpoint.admin_dsn,
        "SELECT extract(epoch FROM next_attempt_at - clock_timestamp()) AS wait, needs_lookup "
        "  FROM symphony.payment_outbox_pending WHERE outbox_id = %s", (item.outbox_id,))
    assert 29.0 <= float(rows[0]["wait"]) <= 30.0
    assert rows[0]["needs_lookup"] is True


@pytest.mark.parametrize(
    ("completion_outcome", "code"),
    [("BOGUS", "INVALID_OUTCOME"), ("DISPATCHING", "INVALID_OUTCOME")],
)
async def test_completion_outcome_is_validated(
    isolated_db: Database, completion_outcome: str, code: str
) -> None:
    store = OutboxStore(isolated_db)
    item = await _claimed(store)
    with pytest.raises(SymphonyError) as info:
        await isolated_db.fetch_all(
            Role.EXECUTOR,
            "complete_outbox_attempt",
            {"outbox_id": item.outbox_id, "lease_token": item.lease_token,
             "outcome": completion_outcome, "error_code": None, "error_detail": None,
             "ambiguous": False, "rail_transaction_id": None},
        )
    assert info.value.sqlstate == "SY024" and info.value.code == code
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-test"))
