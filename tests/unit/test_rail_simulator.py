"""Rail simulator state and behaviour, exercised without HTTP or real time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from symphony.services.rail_sim.simulator import (
    HangMode,
    RailSimBehaviour,
    RailSimulator,
    SimReply,
)


class RecordingWait:
    """Stands in for the clock: records each requested wait and returns at once."""

    def __init__(self, on_wait: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.waits: list[float] = []
        self._on_wait = on_wait

    async def __call__(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if self._on_wait is not None:
            await self._on_wait(seconds)
        return False


def body(
    reference: str, destination: str = "DE89370400440532013000", amount: int = 100
) -> dict[str, Any]:
    return {
        "reference": reference,
        "rail_type": "sepa",
        "payload": {"destination": destination, "amount_minor": amount, "currency": "EUR"},
    }


async def send(sim: RailSimulator, reference: str, **kwargs: Any) -> SimReply:
    return await sim.dispatch(reference, body(reference, **kwargs))


async def test_first_call_executes_and_answers_201_with_transaction_id() -> None:
    sim = RailSimulator(wait=RecordingWait())

    reply = await send(sim, "ref-1")

    assert reply.status_code == 201
    assert reply.body["status"] == "EXECUTED"
    assert reply.body["reference"] == "ref-1"
    assert reply.body["replayed"] is False
    assert reply.body["rail_transaction_id"]
    assert sim.execution_count("ref-1") == 1
    assert sim.call_count("ref-1") == 1


async def test_replay_answers_200_with_same_transaction_and_counts_call_not_execution() -> None:
    sim = RailSimulator(wait=RecordingWait())
    first = await send(sim, "ref-1")

    replays = [await send(sim, "ref-1") for _ in range(3)]

    for replay in replays:
        assert replay.status_code == 200
        assert replay.body["replayed"] is True
        assert replay.body["rail_transaction_id"] == first.body["rail_transaction_id"]
    assert sim.execution_count("ref-1") == 1
    assert sim.call_count("ref-1") == 4


async def test_transaction_ids_are_unique_per_reference_and_across_resets() -> None:
    sim = RailSimulator(wait=RecordingWait())
    ids = [(await send(sim, f"ref-{i}")).body["rail_transaction_id"] for i in range(3)]
    sim.reset()
    ids.append((await send(sim, "ref-0")).body["rail_transaction_id"])

    assert len(set(ids)) == 4


@pytest.mark.parametrize(
    "changed",
    [
        {
            "payload": {
                "destination": "DE89370400440532013000",
                "amount_minor": 999,
                "currency": "EUR",
            }
        },
        {"rail_type": "swift"},
    ],
    ids=["payload", "rail_type"],
)
async def test_same_reference_with_different_request_is_409_reference_conflict(
    changed: dict[str, Any],
) -> None:
    sim = RailSimulator(wait=RecordingWait())
    await send(sim, "ref-1")

    reply = await sim.dispatch("ref-1", {**body("ref-1"), **changed})

    assert reply.status_code == 409
    assert reply.body["code"] == "REFERENCE_CONFLICT"
    assert sim.execution_count("ref-1") == 1
    assert sim.call_count("ref-1") == 2


async def test_conflict_is_detected_even_if_first_call_did_not_execute() -> None:
    sim = RailSimulator(wait=RecordingWait())
    declined = await send(sim, "ref-1", destination="RETRY:1")

    reply = await send(sim, "ref-1", destination="somewhere-else")

    assert declined.status_code == 503
    assert reply.status_code == 409
    assert sim.execution_count("ref-1") == 0


async def test_payload_key_order_does_not_count_as_a_different_request() -> None:
    sim = RailSimulator(wait=RecordingWait())
    await sim.dispatch(
        "ref-1", {"reference": "ref-1", "rail_type": "sepa", "payload": {"a": 1, "b": 2}}
    )

    reply = await sim.dispatch(
        "ref-1", {"reference": "ref-1", "rail_type": "sepa", "payload": {"b": 2, "a": 1}}
    )

    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("key", "request_body", "code"),
    [
        (None, body("ref-1"), "MISSING_IDEMPOTENCY_KEY"),
        ("", body("ref-1"), "MISSING_IDEMPOTENCY_KEY"),
        ("ref-2", body("ref-1"), "IDEMPOTENCY_KEY_MISMATCH"),
        ("a/b", body("a/b"), "INVALID_REFERENCE"),
        ("x" * 201, body("x" * 201), "INVALID_REFERENCE"),
        ("ref-1", [body("ref-1")], "INVALID_REQUEST"),
        ("ref-1", {**body("ref-1"), "rail_type": ""}, "INVALID_REQUEST"),
        ("ref-1", {**body("ref-1"), "payload": "text"}, "INVALID_REQUEST"),
    ],
    ids=[
        "no-key",
        "empty-key",
        "key-mismatch",
        "unsafe-ref",
        "long-ref",
        "not-object",
        "no-rail",
        "bad-payload",
    ],
)
async def test_invalid_requests_are_400_with_code_and_change_nothing(
    key: str | None, request_body: object, code: str
) -> None:
    sim = RailSimulator(wait=RecordingWait())

    reply = await sim.dispatch(key, request_body)

    assert reply.status_code == 400
    assert reply.body["code"] == code
    assert sim.stats()["total_calls"] == 0
    assert sim.stats()["total_executions"] == 0


async def test_lookup_reports_executed_payment_and_404_for_unknown_reference() -> None:
    sim = RailSimulator(wait=RecordingWait())
    executed = await send(sim, "ref-1")

    found = sim.lookup("ref-1")
    missing = sim.lookup("ref-2")

    assert found.status_code == 200
    assert found.body == {
        "reference": "ref-1",
        "status": "EXECUTED",
        "rail_transaction_id": executed.body["rail_transaction_id"],
    }
    assert missing.status_code == 404
    assert missing.body["code"] == "NOT_FOUND"


async def test_fail_trigger_declines_every_call_with_its_code_without_executing() -> None:
    sim = RailSimulator(wait=RecordingWait())

    replies = [await send(sim, "ref-1", destination="FAIL:ACCOUNT_CLOSED") for _ in range(2)]

    assert [r.status_code for r in replies] == [422, 422]
    assert all(r.body["code"] == "ACCOUNT_CLOSED" for r in replies)
    assert sim.execution_count("ref-1") == 0
    assert sim.lookup("ref-1").status_code == 404


async def test_retry_trigger_answers_503_for_first_n_calls_then_executes_once() -> None:
    sim = RailSimulator(wait=RecordingWait())

    statuses = [(await send(sim, "ref-1", destination="RETRY:2")).status_code for _ in range(4)]

    assert statuses == [503, 503, 201, 200]
    assert sim.execution_count("ref-1") == 1
    assert sim.call_count("ref-1") == 4


@pytest.mark.parametrize("destination", ["FAIL:", "FAIL:lowercase", "RETRY:x", "HANG:-1"])
async def test_malformed_trigger_is_400_invalid_trigger(destination: str) -> None:
    sim = RailSimulator(wait=RecordingWait())

    reply = await send(sim, "ref-1", destination=destination)

    assert reply.status_code == 400
    assert reply.body["code"] == "INVALID_TRIGGER"
    assert sim.execution_count("ref-1") == 0


async def test_hang_trigger_after_execute_executes_before_withholding_the_answer() -> None:
    executions_seen_during_wait: list[int] = []

    async def observe(_: float) -> None:
        executions_seen_during_wait.append(sim.execution_count("ref-1"))

    wait = RecordingWait(observe)
    sim = RailSimulator(RailSimBehaviour(hang_seconds=7.5), wait=wait)

    first = await send(sim, "ref-1", destination="HANG:1")
    second = await send(sim, "ref-1", destination="HANG:1")

    assert wait.waits == [7.5]
    assert executions_seen_during_wait == [1]
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.body["rail_transaction_id"] == first.body["rail_transaction_id"]


async def test_hang_trigger_counts_replays_so_first_n_calls_all_hang() -> None:
    wait = RecordingWait()
    sim = RailSimulator(RailSimBehaviour(hang_seconds=3.0), wait=wait)

    statuses = [(await send(sim, "ref-1", destination="HANG:2")).status_code for _ in range(3)]

    assert statuses == [201, 200, 200]
    assert wait.waits == [3.0, 3.0]
    assert sim.execution_count("ref-1") == 1


async def test_hang_before_execute_waits_first_then_executes() -> None:
    executions_seen_during_wait: list[int] = []

    async def observe(_: float) -> None:
        executions_seen_during_wait.append(sim.execution_count("ref-1"))

    behaviour = RailSimBehaviour(hang_seconds=2.0, hang_mode=HangMode.BEFORE_EXECUTE)
    sim = RailSimulator(behaviour, wait=RecordingWait(observe))

    reply = await send(sim, "ref-1", destination="HANG:1")

    assert executions_seen_during_wait == [0]
    assert reply.status_code == 201
    assert sim.execution_count("ref-1") == 1


async def test_before_execute_hang_overtaken_by_retry_ends_as_replay() -> None:
    release = asyncio.Event()
    hanging = asyncio.Event()

    async def block(_: float) -> None:
        hanging.set()
        await release.wait()

    behaviour = RailSimBehaviour(hang_mode=HangMode.BEFORE_EXECUTE)
    sim = RailSimulator(behaviour, wait=RecordingWait(block))

    hung = asyncio.create_task(send(sim, "ref-1", destination="HANG:1"))
    await hanging.wait()
    assert sim.lookup("ref-1").status_code == 404
    retry = await send(sim, "ref-1", destination="HANG:1")
    release.set()
    late = await hung

    assert retry.status_code == 201
    assert late.status_code == 200
    assert late.body["rail_transaction_id"] == retry.body["rail_transaction_id"]
    assert sim.execution_count("ref-1") == 1


async def test_interrupted_before_execute_hang_never_executes() -> None:
    behaviour = RailSimBehaviour(hang_seconds=60.0, hang_mode=HangMode.BEFORE_EXECUTE)
    sim = RailSimulator(behaviour)

    hung = asyncio.create_task(send(sim, "ref-1", destination="HANG:1"))
    # Nothing before the hang suspends, so one scheduling round parks the call in it.
    await asyncio.sleep(0)
    assert sim.call_count("ref-1") == 1
    assert not hung.done()
    sim.interrupt_waits()
    reply = await asyncio.wait_for(hung, timeout=5)

    assert reply.status_code == 503
    assert sim.execution_count("ref-1") == 0


async def test_call_admitted_before_reset_does_not_execute_after_it() -> None:
    release = asyncio.Event()
    hanging = asyncio.Event()

    async def block(_: float) -> None:
        hanging.set()
        await release.wait()

    behaviour = RailSimBehaviour(hang_mode=HangMode.BEFORE_EXECUTE)
    sim = RailSimulator(behaviour, wait=RecordingWait(block))

    hung = asyncio.create_task(send(sim, "ref-1", destination="HANG:1"))
    await hanging.wait()
    sim.reset()
    release.set()
    reply = await hung

    assert reply.status_code == 503
    assert sim.stats()["total_executions"] == 0


async def test_latency_applies_to_every_dispatch_including_replays() -> None:
    wait = RecordingWait()
    sim = RailSimulator(RailSimBehaviour(latency_ms=40), wait=wait)

    await send(sim, "ref-1")
    await send(sim, "ref-1")

    assert wait.waits == [0.04, 0.04]


async def test_retryable_rate_one_answers_503_without_executing() -> None:
    sim = RailSimulator(RailSimBehaviour(retryable_failure_rate=1.0), wait=RecordingWait())

    replies = [await send(sim, "ref-1") for _ in range(5)]

    assert all(r.status_code == 503 and r.body["code"] == "RAIL_UNAVAILABLE" for r in replies)
    assert sim.execution_count("ref-1") == 0
    assert sim.call_count("ref-1") == 5


async def test_terminal_rate_one_declines_with_a_configured_code_without_executing() -> None:
    codes = ("INSUFFICIENT_FUNDS", "ACCOUNT_CLOSED")
    behaviour = RailSimBehaviour(terminal_failure_rate=1.0, terminal_codes=codes, seed=3)
    sim = RailSimulator(behaviour, wait=RecordingWait())

    replies = [await send(sim, f"ref-{i}") for i in range(20)]

    assert all(r.status_code == 422 for r in replies)
    assert {r.body["code"] for r in replies} == set(codes)
    assert sim.stats()["total_executions"] == 0


async def test_hang_rate_one_withholds_answer_of_fresh_dispatch() -> None:
    wait = RecordingWait()
    sim = RailSimulator(RailSimBehaviour(hang_rate=1.0, hang_seconds=4.0), wait=wait)

    reply = await send(sim, "ref-1")

    assert reply.status_code == 201
    assert wait.waits == [4.0]


async def test_random_failures_never_apply_to_replays_of_executed_payments() -> None:
    wait = RecordingWait()
    sim = RailSimulator(wait=wait)
    first = await send(sim, "ref-1")
    sim.set_behaviour(
        RailSimBehaviour(retryable_failure_rate=1.0, terminal_failure_rate=1.0, hang_rate=1.0)
    )

    replay = await send(sim, "ref-1")

    assert replay.status_code == 200
    assert replay.body["rail_transaction_id"] == first.body["rail_transaction_id"]
    assert wait.waits == []


async def outcome_sequence(sim: RailSimulator, count: int) -> list[tuple[int, str | None]]:
    replies = [await send(sim, f"ref-{i}") for i in range(count)]
    return [(r.status_code, r.body.get("code")) for r in replies]


def mixed(seed: int, hang_mode: HangMode = HangMode.AFTER_EXECUTE) -> RailSimBehaviour:
    """Every kind of random failure at once, so sequences are varied."""
    return RailSimBehaviour(
        retryable_failure_rate=0.3,
        terminal_failure_rate=0.3,
        hang_rate=0.3,
        hang_mode=hang_mode,
        seed=seed,
    )


async def test_same_seed_gives_same_outcome_sequence_and_other_seed_differs() -> None:
    first = await outcome_sequence(RailSimulator(mixed(42), wait=RecordingWait()), 60)
    again = await outcome_sequence(RailSimulator(mixed(42), wait=RecordingWait()), 60)
    other = await outcome_sequence(RailSimulator(mixed(43), wait=RecordingWait()), 60)

    assert first == again
    assert first != other
    assert {status for status, _ in first} == {201, 422, 503}


async def test_reset_clears_state_and_restarts_the_seeded_sequence() -> None:
    sim = RailSimulator(mixed(7), wait=RecordingWait())
    before = await outcome_sequence(sim, 30)

    sim.reset()

    assert sim.stats()["total_calls"] == 0
    assert sim.stats()["executions"] == {}
    assert await outcome_sequence(sim, 30) == before


async def test_stats_report_per_reference_counters_and_totals() -> None:
    sim = RailSimulator(wait=RecordingWait())
    await send(sim, "a")
    await send(sim, "a")
    await send(sim, "b", destination="RETRY:1")
    await send(sim, "b", destination="RETRY:1")
    await send(sim, "c", destination="FAIL:ACCOUNT_CLOSED")

    assert sim.stats() == {
        "executions": {"a": 1, "b": 1},
        "calls": {"a": 2, "b": 2, "c": 1},
        "total_executions": 2,
        "total_calls": 5,
        "max_executions_per_reference": 1,
        # The second call of "a" was answered from its stored result: a rail without
        # deduplication would have paid it again.
        "replays": {"a": 1},
        "total_replays": 1,
        "in_flight": 0,
    }


async def test_concurrent_calls_with_same_reference_execute_once() -> None:
    async def yield_to_others(_: float) -> None:
        await asyncio.sleep(0)

    sim = RailSimulator(
        RailSimBehaviour(latency_ms=5, hang_rate=0.5, seed=1), wait=RecordingWait(yield_to_others)
    )

    replies = await asyncio.gather(*(send(sim, "ref-1") for _ in range(50)))

    assert sorted(r.status_code for r in replies) == [200] * 49 + [201]
    assert len({r.body["rail_transaction_id"] for r in replies}) == 1
    assert sim.execution_count("ref-1") == 1
    assert sim.call_count("ref-1") == 50


@pytest.mark.parametrize(
    "fields",
    [
        {"retryable_failure_rate": 1.5},
        {"hang_rate": -0.1},
        {"latency_ms": -1},
        {"terminal_codes": []},
        {"terminal_codes": ["not a code"]},
        {"hang_mode": "sideways"},
        {"unknown_knob": 1},
    ],
)
def test_behaviour_rejects_invalid_settings(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RailSimBehaviour.model_validate(fields)


@settings(max_examples=60, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2", "r3"]),
            st.sampled_from(["plain", "RETRY:1", "HANG:1", "FAIL:ACCOUNT_CLOSED"]),
        ),
        max_size=30,
    ),
    seed=st.integers(0, 1000),
    mode=st.sampled_from(list(HangMode)),
)
async def test_no_sequence_of_calls_executes_a_reference_twice_and_lookup_agrees(
    calls: list[tuple[str, str]], seed: int, mode: HangMode
) -> None:
    behaviour = mixed(seed, mode)

    async def yield_to_others(_: float) -> None:
        await asyncio.sleep(0)

    sim = RailSimulator(behaviour, wait=RecordingWait(yield_to_others))
    # Each reference keeps one destination so retries are genuine retries.
    destination: dict[str, str] = {}
    for reference, trigger in calls:
        destination.setdefault(reference, trigger)

    await asyncio.gather(*(send(sim, ref, destination=destination[ref]) for ref, _ in calls))

    stats = sim.stats()
    assert stats["max_executions_per_reference"] <= 1
    assert stats["total_calls"] == len(calls)
    for reference in destination:
        executed = sim.execution_count(reference) == 1
        assert (sim.lookup(reference).status_code == 200) is executed
