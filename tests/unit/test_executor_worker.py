"""The executor worker against a real PostgreSQL: every rail answer ends in the right ledger
rows, lookups prevent second sends, fencing is reported, concurrency is bounded, and a stop
never completes an item the worker did not finish.

The rail is an in-process fake (the classification is what is under test); every test claims
from its own fresh database, because the session database holds other tests' items.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from tests.support.database import DatabaseFactory, unique
from tests.support.outbox import register_participant

from symphony.db import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    SymphonyError,
    test_only,
)
from symphony.outbox import (
    AccessStore,
    ClaimedItem,
    Completion,
    OutboxStore,
    Outcome,
    PaymentInstruction,
)
from symphony.rails import (
    DispatchOutcome,
    DispatchResult,
    HttpRailClient,
    LookupResult,
    LookupStatus,
)
from symphony.services.worker import ExecutorWorker, WorkerConfig, payload_problem
from symphony.services.worker import executor as executor_module
from symphony.services.worker.config import lease_margin_seconds, worst_case_call_seconds

SUCCESS = DispatchResult(DispatchOutcome.SUCCESS, rail_transaction_id="rail-tx-1")

DispatchHook = Callable[[str], Awaitable[DispatchResult | None]]


@dataclass
class FakeRail:
    """A rail that answers from a script and records every call it gets."""

    answer: DispatchResult = SUCCESS
    lookup_answer: LookupResult = field(
        default_factory=lambda: LookupResult(LookupStatus.NOT_FOUND)
    )
    delay: float = 0.0
    on_dispatch: DispatchHook | None = None
    supports_lookup: bool = True
    dispatched: list[str] = field(default_factory=list)
    looked_up: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def dispatch(
        self, reference: str, *, rail_type: str, payload: Mapping[str, Any],
        timeout: float,  # noqa: ASYNC109 - the RailClient protocol
    ) -> DispatchResult:
        self.dispatched.append(reference)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.on_dispatch is not None:
                override = await self.on_dispatch(reference)
                if override is not None:
                    return override
            return self.answer
        finally:
            self.in_flight -= 1

    async def lookup(self, reference: str, *, timeout: float) -> LookupResult:  # noqa: ASYNC109
        self.looked_up.append(reference)
        return self.lookup_answer

    async def aclose(self) -> None:
        return None


@dataclass
class Harness:
    db: Database
    store: OutboxStore
    admin_dsn: str

    def config(self, **overrides: Any) -> WorkerConfig:
        values: dict[str, Any] = {
            "worker_id": unique("worker"),
            "lease_seconds": 60,
            "dispatch_timeout_seconds": 2.0,
            "lookup_timeout_seconds": 1.0,
            "poll_interval_seconds": 30.0,
            "shutdown_grace_seconds": 5.0,
        }
        values.update(overrides)
        return WorkerConfig(**values)

    async def enqueue(self, destination: str = "ACCT-1", **payload: Any) -> UUID:
        body = {"amount": "12.50", "currency": "EUR", "destination": destination, **payload}
        result = await self.store.enqueue(PaymentInstruction(
            instruction_id=unique("instr"), idempotency_key=unique("key"),
            participant_id="participant-a", rail_type="SEPA_CT", payload=body,
        ))
        return result.outbox_id

    async def states(self, outbox_id: UUID) -> list[str]:
        return [row["state"] for row in await self.store.ledger(outbox_id)]

    async def pending_row(self, outbox_id: UUID) -> dict[str, Any] | None:
        rows = await test_only.query_no_role(
            self.admin_dsn,
            "SELECT needs_lookup, lease_token, claimed_by, next_attempt_at, last_error_code "
            "FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
            (outbox_id,),
        )
        return rows[0] if rows else None

    async def make_due(self, outbox_id: UUID) -> None:
        """Skip the retry backoff: the item is due now."""
        await test_only.query_no_role(
            self.admin_dsn,
            "UPDATE symphony.payment_outbox_pending SET next_attempt_at = now() "
            "WHERE outbox_id = %s",
            (outbox_id,),
        )

    async def expire_lease(self, outbox_id: UUID) -> None:
        await test_only.query_no_role(
            self.admin_dsn,
            "UPDATE symphony.payment_outbox_pending "
            "SET lease_expires_at = now() - interval '1 second' WHERE outbox_id = %s",
            (outbox_id,),
        )


@pytest.fixture(scope="module")
def module_settings(make_database: DatabaseFactory) -> DatabaseSettings:
    """A database of this module's own: no other module's items can be claimed here."""
    return make_database()


@pytest.fixture
async def h(module_settings: DatabaseSettings) -> AsyncIterator[Harness]:
    assert module_settings.database_url is not None
    admin_dsn = module_settings.database_url.get_secret_value()
    # Earlier tests' leftovers (rescheduled retries, abandoned leases) are parked a day ahead,
    # so each test claims and repairs only the items it enqueued itself.
    await test_only.query_no_role(
        admin_dsn,
        "UPDATE symphony.payment_outbox_pending SET "
        "next_attempt_at = CASE WHEN lease_token IS NULL THEN now() + interval '1 day' "
        "ELSE next_attempt_at END, "
        "lease_expires_at = CASE WHEN lease_token IS NULL THEN NULL "
        "ELSE now() + interval '1 day' END",
    )
    db = await Database.open(module_settings)
    try:
        yield Harness(db, OutboxStore(db), admin_dsn)
    finally:
        await db.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - polls state no event announces
            await asyncio.sleep(0.02)


# -- classification --------------------------------------------------------------------------


async def test_success_is_recorded_dispatched_with_the_rail_transaction_id(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail()
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert (result.claimed, result.dispatched, result.retried, result.failed) == (1, 1, 0, 0)
    assert rail.dispatched == [str(outbox_id)]
    ledger = await h.store.ledger(outbox_id)
    assert [r["state"] for r in ledger] == ["DISPATCHING", "DISPATCHED"]
    assert ledger[-1]["rail_transaction_id"] == "rail-tx-1"
    assert await h.pending_row(outbox_id) is None


async def test_a_revoked_participants_queued_and_retrying_payments_still_dispatch(
    h: Harness,
) -> None:
    # Accepted payments are obligations (revoking stops new payments and tokens only): a
    # payment queued before the revocation, and one waiting out a retry, are still sent.
    participant = await register_participant(h.db)

    async def enqueue() -> UUID:
        result = await h.store.enqueue(PaymentInstruction(
            instruction_id=unique("instr"), idempotency_key=unique("key"),
            participant_id=participant, rail_type="SEPA_CT",
            payload={"amount": "12.50", "currency": "EUR", "destination": "ACCT-R"}))
        return result.outbox_id

    retrying = await enqueue()
    busy = FakeRail(answer=DispatchResult(DispatchOutcome.RETRYABLE, "RAIL_UNAVAILABLE", "503"))
    await ExecutorWorker(h.store, busy, h.config()).run_once()
    assert await h.states(retrying) == ["DISPATCHING", "RETRYABLE"]
    queued = await enqueue()

    await AccessStore(h.db).revoke_participant(participant)
    assert await AccessStore(h.db).pending_payment_count(participant) == 2
    await h.make_due(retrying)
    rail = FakeRail()
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert result.dispatched == 2
    assert sorted(rail.dispatched) == sorted([str(retrying), str(queued)])
    assert await h.states(queued) == ["DISPATCHING", "DISPATCHED"]
    assert await h.states(retrying) == ["DISPATCHING", "RETRYABLE", "DISPATCHING", "DISPATCHED"]
    assert await AccessStore(h.db).pending_payment_count(participant) == 0


async def test_retryable_answer_reschedules_without_a_lookup_flag(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.RETRYABLE, "RAIL_UNAVAILABLE", "503"))
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert (result.claimed, result.retried) == (1, 1)
    ledger = await h.store.ledger(outbox_id)
    assert [r["state"] for r in ledger] == ["DISPATCHING", "RETRYABLE"]
    assert ledger[-1]["error_code"] == "RAIL_UNAVAILABLE"
    pending = await h.pending_row(outbox_id)
    assert pending is not None
    assert pending["lease_token"] is None and pending["needs_lookup"] is False


async def test_terminal_answer_fails_the_item_with_the_rails_code(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.TERMINAL, "INSUFFICIENT_FUNDS", "422"))
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert (result.claimed, result.failed) == (1, 1)
    ledger = await h.store.ledger(outbox_id)
    assert [r["state"] for r in ledger] == ["DISPATCHING", "FAILED"]
    assert ledger[-1]["error_code"] == "INSUFFICIENT_FUNDS"
    assert await h.pending_row(outbox_id) is None


async def test_ambiguous_answer_retries_and_flags_a_lookup(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT", "timeout"))
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert result.retried == 1
    assert await h.states(outbox_id) == ["DISPATCHING", "RETRYABLE"]
    pending = await h.pending_row(outbox_id)
    assert pending is not None and pending["needs_lookup"] is True


async def test_executed_lookup_records_dispatched_without_a_second_send(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT", "timeout"))
    worker = ExecutorWorker(h.store, rail, h.config())
    await worker.run_once()
    await h.make_due(outbox_id)

    rail.lookup_answer = LookupResult(LookupStatus.EXECUTED, rail_transaction_id="rail-tx-9")
    rail.answer = SUCCESS
    result = await worker.run_once()

    assert (result.claimed, result.looked_up, result.skipped_send, result.dispatched) == (
        1, 1, 1, 1)
    assert rail.dispatched == [str(outbox_id)], "the rail must see one send only (I10)"
    assert rail.looked_up == [str(outbox_id)]
    ledger = await h.store.ledger(outbox_id)
    assert [r["state"] for r in ledger] == [
        "DISPATCHING", "RETRYABLE", "DISPATCHING", "DISPATCHED"]
    assert ledger[-1]["rail_transaction_id"] == "rail-tx-9"


async def test_not_found_lookup_sends_again_under_the_same_reference(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT", "timeout"))
    worker = ExecutorWorker(h.store, rail, h.config())
    await worker.run_once()
    await h.make_due(outbox_id)

    rail.answer = SUCCESS
    result = await worker.run_once()

    assert (result.looked_up, result.skipped_send, result.dispatched) == (1, 0, 1)
    assert rail.dispatched == [str(outbox_id), str(outbox_id)]
    assert await h.states(outbox_id) == [
        "DISPATCHING", "RETRYABLE", "DISPATCHING", "DISPATCHED"]


async def test_unknown_lookup_retries_without_sending(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT", "timeout"))
    worker = ExecutorWorker(h.store, rail, h.config())
    await worker.run_once()
    await h.make_due(outbox_id)

    rail.lookup_answer = LookupResult(LookupStatus.UNKNOWN, detail="rail unreachable")
    result = await worker.run_once()

    assert (result.looked_up, result.retried, result.dispatched) == (1, 1, 0)
    assert rail.dispatched == [str(outbox_id)], "an UNKNOWN lookup must not lead to a send"
    ledger = await h.store.ledger(outbox_id)
    assert ledger[-1]["state"] == "RETRYABLE" and ledger[-1]["error_code"] == "LOOKUP_UNKNOWN"
    pending = await h.pending_row(outbox_id)
    assert pending is not None and pending["needs_lookup"] is True


async def test_zombie_requeued_item_is_looked_up_before_it_is_sent(h: Harness) -> None:
    outbox_id = await h.enqueue()
    # A worker that died mid-dispatch: claimed, never completed, lease expired, repaired.
    await h.store.claim(unique("dead-worker"), 10, 60)
    await h.expire_lease(outbox_id)
    assert [r.outbox_id for r in await h.store.repair_expired_leases(10)] == [outbox_id]
    await h.make_due(outbox_id)  # the settle time passes (in the database)

    rail = FakeRail(lookup_answer=LookupResult(LookupStatus.EXECUTED, "rail-tx-dead"))
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert (result.skipped_send, result.dispatched) == (1, 1)
    assert rail.dispatched == []
    assert await h.states(outbox_id) == [
        "DISPATCHING", "ZOMBIE_REQUEUE", "DISPATCHING", "DISPATCHED"]


class CorruptingStore(OutboxStore):
    """Hands the worker a payload the database would never have accepted at enqueue."""

    async def claim(self, worker_id: str, batch_size: int, lease_seconds: int
                    ) -> list[ClaimedItem]:
        items = await super().claim(worker_id, batch_size, lease_seconds)
        bad = {"amount": "-5", "currency": "EUR", "destination": "X"}
        return [replace(item, payload=bad) for item in items]


async def test_invalid_payload_fails_without_calling_the_rail(h: Harness) -> None:
    outbox_id = await h.enqueue()
    rail = FakeRail()
    result = await ExecutorWorker(CorruptingStore(h.db), rail, h.config()).run_once()

    assert (result.claimed, result.failed) == (1, 1)
    assert rail.dispatched == [] and rail.looked_up == []
    ledger = await h.store.ledger(outbox_id)
    assert [r["state"] for r in ledger] == ["DISPATCHING", "FAILED"]
    assert ledger[-1]["error_code"] == "INVALID_PAYLOAD"


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"amount": "12.50", "currency": "EUR", "destination": "X"}, None),
        ({"amount": "7", "currency": "USD", "destination": "X"}, None),
        ({"amount": 7, "currency": "USD", "destination": "X"}, "amount"),
        ({"currency": "EUR", "destination": "X"}, "amount"),
        ({"amount": True, "currency": "EUR", "destination": "X"}, "amount"),
        ({"amount": "0", "currency": "EUR", "destination": "X"}, "amount"),
        ({"amount": "1.123456789", "currency": "EUR", "destination": "X"}, "amount"),
        ({"amount": "1e5", "currency": "EUR", "destination": "X"}, "amount"),
        ({"amount": "1", "currency": "eur", "destination": "X"}, "currency"),
        ({"amount": "1", "destination": "X"}, "currency"),
        ({"amount": "1", "currency": "EUR", "destination": ""}, "destination"),
        ({"amount": "1", "currency": "EUR", "destination": "X" * 257}, "destination"),
        ({"amount": "1", "currency": "EUR", "destination": 42}, "destination"),
    ],
)
def test_payload_check(payload: dict[str, Any], problem: str | None) -> None:
    found = payload_problem(payload)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


# -- fencing ---------------------------------------------------------------------------------


async def test_completion_after_the_lease_was_repaired_is_reported_fenced(h: Harness) -> None:
    outbox_id = await h.enqueue()

    async def lose_the_lease(reference: str) -> DispatchResult | None:
        # While the rail call is in flight, the lease expires and the repair requeues the item.
        await h.expire_lease(UUID(reference))
        await h.store.repair_expired_leases(10)
        return None

    rail = FakeRail(on_dispatch=lose_the_lease)
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert (result.claimed, result.fenced, result.dispatched) == (1, 1, 0)
    assert await h.states(outbox_id) == ["DISPATCHING", "ZOMBIE_REQUEUE"]
    pending = await h.pending_row(outbox_id)
    assert pending is not None
    assert pending["lease_token"] is None and pending["needs_lookup"] is True


# -- concurrency, the loop, stopping ---------------------------------------------------------


async def test_concurrency_is_bounded(h: Harness) -> None:
    ids = [await h.enqueue() for _ in range(12)]
    rail = FakeRail(delay=0.05)
    worker = ExecutorWorker(h.store, rail, h.config(max_concurrency=3))
    # A cycle leases no more than it can dispatch at once, so no lease waits for a slot.
    results = [await worker.run_once() for _ in range(4)]

    assert [(r.claimed, r.dispatched) for r in results] == [(3, 3)] * 4
    assert rail.max_in_flight == 3
    assert sorted(rail.dispatched) == sorted(str(i) for i in ids)


async def test_graceful_stop_records_finished_items_and_leaves_the_rest_leased(
    h: Harness,
) -> None:
    fast = [await h.enqueue(destination="FAST") for _ in range(3)]
    slow = [await h.enqueue(destination="SLOW") for _ in range(2)]
    slow_refs = {str(i) for i in slow}
    never = asyncio.Event()

    async def hang_on_slow(reference: str) -> DispatchResult | None:
        if reference in slow_refs:
            await never.wait()
        return None

    rail = FakeRail(on_dispatch=hang_on_slow)
    worker = ExecutorWorker(h.store, rail, h.config())
    cycle = asyncio.create_task(worker.run_once())
    await eventually(lambda: _true(len(rail.dispatched) == 5 and rail.in_flight == 2))

    worker.request_stop(grace=0.2)
    result = await asyncio.wait_for(cycle, 10)

    assert (result.claimed, result.dispatched, result.abandoned) == (5, 3, 2)
    for outbox_id in fast:
        assert await h.states(outbox_id) == ["DISPATCHING", "DISPATCHED"]
    for outbox_id in slow:
        assert await h.states(outbox_id) == ["DISPATCHING"], "unfinished items stay in flight"
        pending = await h.pending_row(outbox_id)
        assert pending is not None and pending["lease_token"] is not None
    # A stopped worker claims nothing more.
    assert (await worker.run_once()).claimed == 0


async def test_stop_of_a_running_worker_drains_within_the_grace_period(h: Harness) -> None:
    outbox_id = await h.enqueue()
    release = asyncio.Event()

    async def wait_for_release(reference: str) -> DispatchResult | None:
        await release.wait()
        return None

    rail = FakeRail(on_dispatch=wait_for_release)
    worker = ExecutorWorker(h.store, rail, h.config(shutdown_grace_seconds=5.0))
    await worker.start()
    await eventually(lambda: _true(rail.in_flight == 1))

    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0.1)
    release.set()  # finishes inside the grace period: must be recorded
    await asyncio.wait_for(stopping, 10)

    assert not worker.running
    assert await h.states(outbox_id) == ["DISPATCHING", "DISPATCHED"]
    await worker.stop()  # a repeated stop is harmless


async def test_notification_wakes_the_worker_before_the_poll_interval(h: Harness) -> None:
    rail = FakeRail()
    worker = ExecutorWorker(h.store, rail, h.config(poll_interval_seconds=60.0))
    await worker.start()
    try:
        await eventually(lambda: _true(worker.listening))
        await asyncio.sleep(0.2)  # let the wake-up that follows connecting run its cycle
        outbox_id = await h.enqueue()
        await eventually(lambda: _true(rail.dispatched == [str(outbox_id)]), within=5.0)
        await eventually(lambda: _async_states_end(h, outbox_id, "DISPATCHED"), within=5.0)
    finally:
        await worker.stop()


async def test_a_full_batch_is_followed_by_another_cycle_at_once(h: Harness) -> None:
    ids = [await h.enqueue() for _ in range(5)]
    rail = FakeRail()
    worker = ExecutorWorker(h.store, rail, h.config(batch_size=2, poll_interval_seconds=60.0))
    await worker.start()
    try:
        await eventually(lambda: _true(len(rail.dispatched) == 5), within=5.0)
    finally:
        await worker.stop()
    assert sorted(rail.dispatched) == sorted(str(i) for i in ids)


async def test_a_hanging_dispatch_does_not_hold_up_new_work(h: Harness) -> None:
    stuck = await h.enqueue(destination="STUCK")
    release = asyncio.Event()

    async def hang_on_stuck(reference: str) -> DispatchResult | None:
        if reference == str(stuck):
            await release.wait()
        return None

    rail = FakeRail(on_dispatch=hang_on_stuck)
    worker = ExecutorWorker(h.store, rail, h.config(poll_interval_seconds=60.0))
    await worker.start()
    try:
        await eventually(lambda: _true(rail.in_flight == 1 and worker.listening))
        later = await h.enqueue()
        await eventually(lambda: _async_states_end(h, later, "DISPATCHED"), within=5.0)
        assert await h.states(stuck) == ["DISPATCHING"]
        release.set()
        await eventually(lambda: _async_states_end(h, stuck, "DISPATCHED"), within=5.0)
    finally:
        await worker.stop()


async def test_the_loop_leases_no_more_than_it_can_dispatch(h: Harness) -> None:
    ids = [await h.enqueue() for _ in range(5)]
    release = asyncio.Event()

    async def hold(reference: str) -> DispatchResult | None:
        await release.wait()
        return None

    rail = FakeRail(on_dispatch=hold)
    worker = ExecutorWorker(h.store, rail, h.config(max_concurrency=2))
    await worker.start()
    try:
        await eventually(lambda: _true(rail.in_flight == 2))
        await asyncio.sleep(0.2)
        leased = [i for i in ids if (row := await h.pending_row(i)) and row["lease_token"]]
        assert len(leased) == 2, "items beyond the free capacity must stay claimable"
        release.set()
        await eventually(lambda: _true(len(rail.dispatched) == 5))
    finally:
        await worker.stop()
    assert rail.max_in_flight == 2


# -- configuration ---------------------------------------------------------------------------


def test_lease_follows_the_zombie_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "45")
    assert WorkerConfig().lease_seconds == 45


def test_invalid_zombie_threshold_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "soon")
    with pytest.raises(ConfigurationError) as info:
        WorkerConfig.load()
    assert info.value.code == "INVALID_ZOMBIE_THRESHOLD"


def test_calls_longer_than_the_lease_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "10")
    with pytest.raises(ConfigurationError) as info:
        # 4 + 1 fits in 10 s on paper, but each call may take twice its timeout: 11 s.
        WorkerConfig.load(dispatch_timeout_seconds=4, lookup_timeout_seconds=1)
    assert info.value.code == "INVALID_WORKER_CONFIG"
    assert "lease" in info.value.message


def test_default_timeouts_shrink_to_fit_a_short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "10")
    config = WorkerConfig.load()
    assert (config.lease_seconds, config.dispatch_timeout_seconds,
            config.lookup_timeout_seconds) == (10, 2.0, 1.0)
    # Worst case 2 * (2 + 1) + 1 = 7 s, ending before the 10 s lease minus its 1 s margin.
    assert worst_case_call_seconds(2.0, 1.0) + lease_margin_seconds(10) <= 10
    assert WorkerConfig.load(dispatch_timeout_seconds=1.5).lookup_timeout_seconds == 1.0


def test_calls_must_end_a_margin_before_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worst case fits inside the lease (4.5 s < 5 s) but not inside lease minus margin:
    # the completion would race the repair. Failed on main, which only required worst < lease.
    with pytest.raises(ConfigurationError) as info:
        WorkerConfig.load(lease_seconds=5, dispatch_timeout_seconds=1.0,
                          lookup_timeout_seconds=0.75)
    assert "1s before the lease" in info.value.message
    # A lease too short for any call with a margin is refused, not silently shrunk to nothing.
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "3")
    with pytest.raises(ConfigurationError):
        WorkerConfig.load()


def test_bad_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMPHONY_BATCH_SIZE", "0")
    with pytest.raises(ConfigurationError) as info:
        WorkerConfig.load()
    assert "SYMPHONY_BATCH_SIZE" in info.value.message


async def _true(value: bool) -> bool:
    return value


async def _async_states_end(h: Harness, outbox_id: UUID, state: str) -> bool:
    states = await h.states(outbox_id)
    return bool(states) and states[-1] == state


# -- money safety: no FAILED once an attempt may have executed; every rail answer recorded -----


async def test_decline_after_an_ambiguous_attempt_is_never_failed(h: Harness) -> None:
    # Attempt 1 times out; attempt 2's lookup says NOT_FOUND (attempt 1 may still be queued at
    # the rail) and the re-send is declined. Failing the item would let the participant pay
    # again when attempt 1 lands: it must stay open. Failed on main (terminal FAILED).
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT"))
    await ExecutorWorker(h.store, rail, h.config()).run_once()
    await h.make_due(outbox_id)

    rail = FakeRail(answer=DispatchResult(DispatchOutcome.TERMINAL, "INSUFFICIENT_FUNDS"))
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()

    assert rail.looked_up == [str(outbox_id)] and rail.dispatched == [str(outbox_id)]
    assert (result.failed, result.retried) == (0, 1)
    assert await h.states(outbox_id) == [
        "DISPATCHING", "RETRYABLE", "DISPATCHING", "RETRYABLE"]
    pending = await h.pending_row(outbox_id)
    assert pending is not None and pending["needs_lookup"] is True
    assert pending["last_error_code"] == "INSUFFICIENT_FUNDS"
    ledger = await h.store.ledger(outbox_id)
    assert ledger[-1]["error_detail"].startswith("held open, not failed")


async def test_invalid_payload_after_an_ambiguous_attempt_is_looked_up_first(h: Harness) -> None:
    # Main recorded INVALID_PAYLOAD as FAILED before any lookup, even for an item whose earlier
    # attempt may have executed. The lookup now comes first, and its EXECUTED settles it.
    outbox_id = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT"))
    await ExecutorWorker(h.store, rail, h.config()).run_once()
    await h.make_due(outbox_id)

    rail = FakeRail(lookup_answer=LookupResult(LookupStatus.EXECUTED, "rail-tx-late"))
    result = await ExecutorWorker(CorruptingStore(h.db), rail, h.config()).run_once()
    assert (result.dispatched, result.failed, result.skipped_send) == (1, 0, 1)
    assert rail.dispatched == []
    assert (await h.states(outbox_id))[-1] == "DISPATCHED"

    # And when the lookup cannot confirm it, the item is held open, never FAILED.
    other = await h.enqueue()
    rail = FakeRail(answer=DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT"))
    await ExecutorWorker(h.store, rail, h.config()).run_once()
    await h.make_due(other)
    rail = FakeRail()  # lookup: NOT_FOUND
    result = await ExecutorWorker(CorruptingStore(h.db), rail, h.config()).run_once()
    assert (result.failed, result.retried) == (0, 1)
    assert rail.dispatched == []
    assert await h.pending_row(other) is not None


@pytest.mark.parametrize(
    ("transaction_id", "recorded"),
    [("tx-1", "DISPATCHED"), ("tx-\x00-\ud800-1", "RETRYABLE")],
    ids=["clean-id", "unstorable-id"],
)
async def test_rail_text_with_nul_and_lone_surrogate_is_recorded(
    h: Harness, transaction_id: str, recorded: str,
) -> None:
    # A NUL or a lone surrogate in what the rail sends back made the driver refuse the whole
    # completion statement on main: the rail had executed every item of the batch and none
    # reached DISPATCHED. Free text (the message) is cleaned where it is parsed; the
    # transaction id is proof and is never cleaned: with one the ledger cannot hold as it is,
    # the items stay open (ambiguous, looked up next). Either way all three are recorded.
    ids = [await h.enqueue() for _ in range(3)]

    def answer(request: httpx.Request) -> httpx.Response:
        reference = request.url.path.rsplit("/", 1)[-1]
        if request.method == "POST":
            reference = json.loads(request.content)["reference"]
        # JSON escapes: the parser turns them into a real NUL and lone surrogates.
        body = json.dumps({"reference": reference, "status": "EXECUTED",
                           "rail_transaction_id": transaction_id,
                           "message": "ok\x00\udfff"})
        return httpx.Response(201, content=body.encode(),
                              headers={"Content-Type": "application/json"})

    rail = HttpRailClient("http://rail.test", transport=httpx.MockTransport(answer))
    result = await ExecutorWorker(h.store, rail, h.config()).run_once()
    await rail.aclose()

    assert (result.claimed, result.unrecorded) == (3, 0)
    for outbox_id in ids:
        ledger = await h.store.ledger(outbox_id)
        assert ledger[-1]["state"] == recorded
        if recorded == "DISPATCHED":
            assert ledger[-1]["rail_transaction_id"] == transaction_id
        else:
            assert ledger[-1]["error_code"] == "RAIL_MALFORMED_RESPONSE"
            assert ledger[-1]["rail_transaction_id"] is None
            pending = await h.pending_row(outbox_id)
            assert pending is not None and pending["needs_lookup"] is True


@pytest.mark.parametrize(
    "lookup_body",
    [
        {"status": "EXECUTED"},
        {"reference": "someone-elses-payment", "status": "EXECUTED",
         "rail_transaction_id": "rtx-other"},
        {"status": "EXECUTED", "rail_transaction_id": "rtx-cached"},
        "REFERENCE:EXECUTED:",
        "REFERENCE:EXECUTED:   ",
        "REFERENCE:EXECUTED:int",
    ],
    ids=["bare-executed", "other-reference", "no-reference", "empty-id", "blank-id", "int-id"],
)
async def test_bare_503_then_a_lookup_that_proves_nothing_leaves_the_item_open(
    h: Harness, lookup_body: Any,
) -> None:
    # Failed on main: the rail (or a proxy) answers the dispatch with a bare 503 and the
    # lookup with 200 {"status": "EXECUTED"}; the item was recorded DISPATCHED "confirmed by
    # lookup" with rail_transaction_id NULL, closed on the word of a generic page. Through the
    # real HTTP client: the lookup is UNKNOWN, the item stays open for the next lookup, and
    # nothing is sent twice.
    outbox_id = await h.enqueue()
    calls: list[str] = []

    def rail(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if request.method == "POST":
            return httpx.Response(503)
        body: Any = lookup_body
        if isinstance(body, str):
            _, _, kind = body.split(":", 2)
            transaction_id: Any = 7 if kind == "int" else kind
            body = {"reference": str(outbox_id), "status": "EXECUTED",
                    "rail_transaction_id": transaction_id}
        return httpx.Response(200, json=body)

    client = HttpRailClient("http://rail.test", transport=httpx.MockTransport(rail))
    worker = ExecutorWorker(h.store, client, h.config())
    try:
        first = await worker.run_once()
        assert (first.claimed, first.retried, first.dispatched) == (1, 1, 0)
        await h.make_due(outbox_id)  # the settle time passes, in the database
        second = await worker.run_once()
    finally:
        await client.aclose()

    assert (second.claimed, second.looked_up, second.dispatched, second.skipped_send) == (
        1, 1, 0, 0)
    assert calls == ["POST", "GET"], "an unproven lookup must lead to neither a close nor a send"
    ledger = await h.store.ledger(outbox_id)
    assert [(r["state"], r["error_code"]) for r in ledger] == [
        ("DISPATCHING", None), ("RETRYABLE", "RAIL_UNCONFIRMED_503"),
        ("DISPATCHING", None), ("RETRYABLE", "LOOKUP_UNKNOWN")]
    pending = await h.pending_row(outbox_id)
    assert pending is not None and pending["needs_lookup"] is True


async def test_bare_503_then_a_proper_lookup_is_recorded_with_its_transaction_id(
    h: Harness,
) -> None:
    outbox_id = await h.enqueue()

    def rail(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(503)
        return httpx.Response(200, json={"reference": str(outbox_id), "status": "EXECUTED",
                                         "rail_transaction_id": "rtx-proper"})

    client = HttpRailClient("http://rail.test", transport=httpx.MockTransport(rail))
    worker = ExecutorWorker(h.store, client, h.config())
    try:
        await worker.run_once()
        await h.make_due(outbox_id)
        second = await worker.run_once()
    finally:
        await client.aclose()
    assert (second.dispatched, second.skipped_send) == (1, 1)
    ledger = await h.store.ledger(outbox_id)
    assert (ledger[-1]["state"], ledger[-1]["rail_transaction_id"]) == ("DISPATCHED",
                                                                        "rtx-proper")


async def test_one_unstorable_outcome_does_not_hold_back_its_batch(h: Harness) -> None:
    # Whatever slips past the rail client's cleaning: the batch statement is refused, the
    # outcomes are recorded one by one, and the bad one once more with its texts escaped.
    ids = [await h.enqueue() for _ in range(3)]
    worker = ExecutorWorker(h.store, FakeRail(), h.config())
    claimed = await h.store.claim("unstorable-test", 10, 60)
    assert {c.outbox_id for c in claimed} == set(ids)
    completions = [
        Completion(c.outbox_id, c.lease_token, Outcome.DISPATCHED,
                   error_detail="bad\x00detail" if i == 1 else None,
                   rail_transaction_id=f"tx-{i}\udcff" if i == 1 else f"tx-{i}")
        for i, c in enumerate(claimed)
    ]
    results = await worker._record(completions)

    assert [r.state for r in results] == ["DISPATCHED"] * 3
    recorded = {c.outbox_id: (await h.store.ledger(c.outbox_id))[-1] for c in claimed}
    assert recorded[claimed[0].outbox_id]["rail_transaction_id"] == "tx-0"
    assert recorded[claimed[1].outbox_id]["rail_transaction_id"] == "tx-1\\udcff"
    assert recorded[claimed[1].outbox_id]["error_detail"] == "baddetail"
    assert recorded[claimed[2].outbox_id]["rail_transaction_id"] == "tx-2"


async def test_an_outcome_waits_out_a_database_outage_instead_of_being_dropped(
    h: Harness,
) -> None:
    # Failed before: a completion refused as DATABASE_UNAVAILABLE (a restart) was given up at
    # once, and the executed payment stayed leased until the zombie repair and a lookup.
    outbox_id = await h.enqueue()
    failures = 2

    class FlakyStore(OutboxStore):
        async def complete_batch(self, completions: Any) -> Any:
            nonlocal failures
            if failures:
                failures -= 1
                raise DatabaseUnavailableError("the database connection failed",
                                               code="DATABASE_UNAVAILABLE")
            return await super().complete_batch(completions)

    rail = FakeRail()
    worker = ExecutorWorker(FlakyStore(h.db), rail, h.config())
    result = await worker.run_once()
    assert (result.claimed, result.dispatched, failures) == (1, 1, 0)
    assert await h.states(outbox_id) == ["DISPATCHING", "DISPATCHED"]
    assert rail.dispatched == [str(outbox_id)]


async def test_an_outage_longer_than_the_lease_leaves_the_item_to_the_repair(
    h: Harness,
) -> None:
    outbox_id = await h.enqueue()

    class DownStore(OutboxStore):
        async def complete_batch(self, completions: Any) -> Any:
            raise DatabaseUnavailableError("the database connection failed",
                                           code="DATABASE_UNAVAILABLE")

    # A lease so short that its margin leaves no time to retry: given up, left leased.
    worker = ExecutorWorker(DownStore(h.db), FakeRail(), h.config(
        lease_seconds=3, dispatch_timeout_seconds=0.2, lookup_timeout_seconds=0.1))
    with pytest.raises(DatabaseUnavailableError):
        await worker.run_once()
    assert await h.states(outbox_id) == ["DISPATCHING"]


# -- completions as the calls finish --------------------------------------------------------


async def test_one_slow_call_does_not_hold_back_its_batchs_finished_items(h: Harness) -> None:
    slow_id = await h.enqueue("SLOW-1")
    fast_ids = [await h.enqueue(f"FAST-{n}") for n in range(5)]
    release = asyncio.Event()

    async def hold_the_slow_one(reference: str) -> DispatchResult | None:
        if reference == str(slow_id):
            await release.wait()
        return None

    rail = FakeRail(on_dispatch=hold_the_slow_one)
    cycle = asyncio.create_task(ExecutorWorker(h.store, rail, h.config()).run_once())
    try:
        async def fast_ones_recorded() -> bool:
            return [(await h.states(i))[-1:] for i in fast_ids] == [["DISPATCHED"]] * 5

        # The fast items are DISPATCHED in the ledger while the slow call still runs.
        await eventually(fast_ones_recorded)
        assert await h.states(slow_id) == ["DISPATCHING"]
        assert not cycle.done()
    finally:
        release.set()
    result = await cycle
    assert (result.claimed, result.dispatched) == (6, 6)
    assert await h.states(slow_id) == ["DISPATCHING", "DISPATCHED"]


# -- completions that meet a lock or statement timeout (issue 14, item 4a) --------------------


# More refusals than main ever made before it gave up (one batch statement, then two tries
# per item for the three items): the lock is held across all of them.
_REFUSALS_BEFORE_RELEASE = 8


@pytest.mark.parametrize(
    ("timeouts", "code"),
    [({"lock_timeout_ms": 100}, "LOCK_TIMEOUT"),
     ({"lock_timeout_ms": 60_000, "statement_timeout_ms": 300}, "QUERY_TIMEOUT")],
    ids=["lock-timeout", "statement-timeout"],
)
async def test_completions_wait_out_a_lock_on_the_ledger_instead_of_being_dropped(
    h: Harness, module_settings: DatabaseSettings, timeouts: dict[str, int], code: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Failed on main: a completion cancelled for its lock (55P03) or statement (57014) timeout
    # was not retried like an unreachable database: two tries per item, then the items the
    # rail had executed were left leased for a whole lease plus a lookup. Here a session holds
    # a lock that blocks every ledger insert (what a long checkpoint did) across many
    # timeouts; once it lets go, every executed item is recorded DISPATCHED. (The retry's
    # backoff is shortened so the test needs no long waits; the lease is the usual 60 s.)
    monkeypatch.setattr(executor_module, "_RECORD_RETRY_FIRST", 0.01)
    monkeypatch.setattr(executor_module, "_RECORD_RETRY_MAX", 0.02)
    ids = [await h.enqueue() for _ in range(3)]
    locked = asyncio.Event()
    refused: list[str] = []
    refused_enough = asyncio.Event()

    async def after_the_lock_is_taken(reference: str) -> DispatchResult | None:
        await locked.wait()
        return None  # SUCCESS, with its transaction id

    class CountingStore(OutboxStore):
        async def complete_batch(self, completions: Any, **kwargs: Any) -> Any:
            try:
                return await super().complete_batch(completions, **kwargs)
            except SymphonyError as exc:
                refused.append(exc.code)
                if len(refused) >= _REFUSALS_BEFORE_RELEASE:
                    refused_enough.set()
                raise

    busy_db = await Database.open(module_settings.model_copy(update=timeouts))
    rail = FakeRail(on_dispatch=after_the_lock_is_taken)
    worker = ExecutorWorker(CountingStore(busy_db), rail, h.config())
    cycle = asyncio.create_task(worker.run_once())
    try:
        await eventually(lambda: _true(len(rail.dispatched) == 3))
        holder = await psycopg.AsyncConnection.connect(h.admin_dsn)
        async with holder, holder.transaction():
            await holder.execute("LOCK TABLE symphony.payment_outbox_attempts IN SHARE MODE")
            locked.set()
            enough = asyncio.create_task(refused_enough.wait())
            await asyncio.wait({enough, cycle}, timeout=60,
                               return_when=asyncio.FIRST_COMPLETED)
            enough.cancel()
            assert not cycle.done(), "the worker gave up while the lock was held"
            assert all(s == ["DISPATCHING"] for s in [await h.states(i) for i in ids])
        result = await cycle
    finally:
        locked.set()
        if not cycle.done():
            cycle.cancel()
        await busy_db.close()

    assert set(refused) == {code}
    assert (result.claimed, result.dispatched, result.unrecorded) == (3, 3, 0)
    for outbox_id in ids:
        assert await h.states(outbox_id) == ["DISPATCHING", "DISPATCHED"]
        assert await h.pending_row(outbox_id) is None
