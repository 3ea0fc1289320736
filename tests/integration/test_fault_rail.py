"""Fault injection on the rail side, with a real `symphony worker` process and the simulator.

* the rail down for a while (connection refused), then back: items back off and retry, and
  every one completes, executed once;
* a rail that never recovers: the retry ceiling ends the clean failures in FAILED
  (RETRY_LIMIT_EXCEEDED), while the items whose call may have executed (a timeout) are never
  failed blindly: they go to review, and the rail did execute them;
* a rail call that hangs past the lease (the worker frozen with SIGSTOP mid-call): the zombie
  repair and the lookup before any re-send keep the execution count at one, and the frozen
  worker's late completion, once it wakes, is fenced.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.database import DatabaseFactory, admin_dsn_of
from tests.support.invariants import check_invariants
from tests.support.outbox import instruction, payload
from tests.support.processes import ServiceProcess, service_env, stop_all, until

from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import OutboxStore
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer

pytestmark = pytest.mark.integration

THRESHOLD = 60
# Error codes of outcomes that may have executed (the worker's and the rail client's).
AMBIGUOUS = {"RAIL_TIMEOUT", "RAIL_TRANSPORT_ERROR", "RAIL_CLIENT_ERROR", "RAIL_UNKNOWN_OUTCOME",
             "RAIL_AMBIGUOUS", "RAIL_SERVER_ERROR", "RAIL_MALFORMED_RESPONSE",
             "RAIL_UNEXPECTED_STATUS", "LOOKUP_TIMEOUT", "LOOKUP_FAILED", "LOOKUP_UNKNOWN"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def outbox(make_database: DatabaseFactory) -> AsyncIterator[tuple[DatabaseSettings, str,
                                                                        OutboxStore]]:
    settings = make_database()
    db = await Database.open(settings)
    yield settings, admin_dsn_of(settings), OutboxStore(db)
    await db.close()


async def _policy(admin: str, **values: int) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in values)
    await test_only.query_no_role(admin, f"UPDATE symphony.outbox_retry_policy SET {sets}",
                                  values)


async def _states(admin: str) -> dict[str, list[str]]:
    rows = await test_only.query_no_role(
        admin, "SELECT outbox_id::text AS id, array_agg(state::text || ':' || "
               "coalesce(error_code, '') ORDER BY attempt_no) AS h "
               "FROM symphony.payment_outbox_attempts GROUP BY outbox_id")
    return {r["id"]: list(r["h"]) for r in rows}


async def _terminal(admin: str) -> dict[str, int]:
    [row] = await test_only.query_no_role(admin, """
        SELECT count(*) FILTER (WHERE state = 'DISPATCHED') AS dispatched,
               count(*) FILTER (WHERE state = 'FAILED') AS failed,
               (SELECT count(*) FROM symphony.payment_outbox_pending
                 WHERE review_reason IS NOT NULL) AS review,
               (SELECT count(*) FROM symphony.payment_outbox_pending) AS pending
          FROM symphony.payment_outbox_attempts""")
    return row


async def test_rail_down_then_back_every_item_backs_off_and_completes(
    outbox: tuple[DatabaseSettings, str, OutboxStore], symphony_home: Path
) -> None:
    _, admin, store = outbox
    await _policy(admin, max_attempts=100, backoff_base_ms=100, backoff_max_ms=400,
                  ambiguous_settle_ms=0)
    port = _free_port()
    sim = RailSimServer(RailSimConfig(port=port))  # not started: the rail is down
    ids = {str((await store.enqueue(instruction())).outbox_id) for _ in range(30)}
    worker = await ServiceProcess.worker(service_env(admin, symphony_home, THRESHOLD),
                                         f"http://127.0.0.1:{port}", "outage-worker")
    try:
        async def each_retried_twice() -> bool:
            assert worker.alive
            states = await _states(admin)
            return len(states) == len(ids) and all(
                sum(s == "RETRYABLE:RAIL_UNREACHABLE" for s in h) >= 2 for h in states.values())

        await until(each_retried_twice, "every item to back off at least twice")
        await sim.start()  # the rail is back, on the same address

        async def all_dispatched() -> bool:
            assert worker.alive
            return (await _terminal(admin))["dispatched"] == len(ids)

        await until(all_dispatched, "every item to complete once the rail is back")
        stats = sim.simulator.stats()
        assert set(stats["executions"]) == ids and stats["max_executions_per_reference"] == 1
        assert stats["total_replays"] == 0  # an unreachable rail executed nothing
        gaps = await test_only.query_no_role(admin, """
            SELECT min(extract(epoch FROM (d.recorded_at - r.recorded_at))) AS shortest
              FROM symphony.payment_outbox_attempts r
              JOIN symphony.payment_outbox_attempts d
                ON d.outbox_id = r.outbox_id AND d.attempt_no = r.attempt_no + 1
             WHERE r.state = 'RETRYABLE'""")
        assert float(gaps[0]["shortest"]) >= 0.08, "each retry waited its backoff (jitter 20%)"
        assert (await _terminal(admin))["failed"] == 0
        await check_invariants(store.db, admin)
    finally:
        await stop_all([worker])
        await sim.stop()


async def test_rail_that_never_recovers_fails_only_what_surely_did_not_execute(
    outbox: tuple[DatabaseSettings, str, OutboxStore], symphony_home: Path
) -> None:
    _, admin, store = outbox
    # The settle time leaves room to take the rail down before the first lookup.
    await _policy(admin, max_attempts=3, backoff_base_ms=0, backoff_max_ms=0,
                  ambiguous_settle_ms=3000)
    port = _free_port()
    # First the rail refuses everything it has not executed (503), and the calls of some
    # payments execute and then hang until the worker's timeout: those may have been paid.
    sim = RailSimServer(RailSimConfig(port=port, behaviour=RailSimBehaviour(
        retryable_failure_rate=1.0, hang_seconds=600)))
    await sim.start()
    clean = {str((await store.enqueue(instruction())).outbox_id) for _ in range(20)}
    hanging = {str((await store.enqueue(instruction(payload=payload(destination="HANG:1"))))
                   .outbox_id) for _ in range(5)}
    worker = await ServiceProcess.worker(
        service_env(admin, symphony_home, THRESHOLD), sim.url, "doomed-rail-worker",
        "--dispatch-timeout", "1", "--lookup-timeout", "1")
    try:
        async def hanging_timed_out() -> bool:
            assert worker.alive
            states = await _states(admin)
            return all(any(s.startswith("RETRYABLE:RAIL_TIMEOUT") for s in states.get(i, []))
                       for i in hanging)

        await until(hanging_timed_out, "the hanging calls to time out")
        executed = set(sim.simulator.stats()["executions"])
        assert executed == hanging
        await sim.stop()  # and the rail never comes back: dispatches and lookups both fail

        async def all_settled() -> bool:
            assert worker.alive
            t = await _terminal(admin)
            return t["pending"] == t["review"]

        await until(all_settled, "every item to end or go to review", limit=90)
        states = await _states(admin)
        review = {r["id"] for r in await test_only.query_no_role(
            admin, "SELECT outbox_id::text AS id FROM symphony.payment_outbox_pending "
                   " WHERE review_reason = 'UNSETTLED_AT_RETRY_LIMIT'")}
        # The items that may have executed wait for an operator. A clean item whose 503 came
        # too late for the worker's timeout (a loaded machine) is ambiguous too, and held the
        # same way: never FAILED on a guess.
        assert hanging <= review, "a paid item is not in review"
        for i in review:
            assert any(s.split(":")[1] in AMBIGUOUS for s in states[i]), states[i]
        for i in clean - review:
            assert states[i][-1] == "FAILED:RETRY_LIMIT_EXCEEDED", states[i]
            assert i not in executed
        for i in hanging:
            assert not any(s.startswith("FAILED") for s in states[i]), states[i]
        await check_invariants(store.db, admin)
    finally:
        await stop_all([worker])
        await sim.stop()


async def test_call_hanging_past_the_lease_is_executed_once(
    outbox: tuple[DatabaseSettings, str, OutboxStore], symphony_home: Path
) -> None:
    _, admin, store = outbox
    await _policy(admin, ambiguous_settle_ms=0)
    sim = RailSimServer(RailSimConfig(port=0, behaviour=RailSimBehaviour(
        hang_rate=1.0, hang_seconds=600, hang_mode="after_execute")))
    await sim.start()
    ids = {str((await store.enqueue(instruction())).outbox_id) for _ in range(10)}
    env = service_env(admin, symphony_home, THRESHOLD)
    frozen = await ServiceProcess.worker(env, sim.url, "frozen-worker",
                                         "--dispatch-timeout", "10")
    rescuer: ServiceProcess | None = None
    try:
        async def all_in_flight() -> bool:
            assert frozen.alive
            stats: dict[str, Any] = sim.simulator.stats()
            return set(stats["executions"]) == ids and stats["in_flight"] == len(ids)

        await until(all_in_flight, "every call to execute and hang")
        frozen.signal(signal.SIGSTOP)  # the worker hangs with its calls: past its lease
        sim.simulator.set_behaviour(RailSimBehaviour())
        await test_only.query_no_role(
            admin, "UPDATE symphony.payment_outbox_pending "
                   "   SET claimed_at = now() - make_interval(secs => %(age)s), "
                   "       lease_expires_at = now() - interval '1 second'",
            {"age": THRESHOLD + 1})
        rescuer = await ServiceProcess.worker(env, sim.url, "rescuer")

        async def all_dispatched() -> bool:
            assert rescuer is not None and rescuer.alive
            return (await _terminal(admin))["dispatched"] == len(ids)

        await until(all_dispatched, "the rescuer to repair, look up and record every item")
        frozen.signal(signal.SIGCONT)  # wakes up: its timeouts fire, its completions are fenced

        async def fenced() -> bool:
            return frozen.count("the lease was lost") >= len(ids)

        await until(fenced, "the frozen worker's completions to be fenced")
        stats = sim.simulator.stats()
        assert stats["executions"] == {i: 1 for i in ids}
        assert stats["total_replays"] == 0, "the rescuer looked up instead of sending again"
        states = await _states(admin)
        for i in ids:
            assert [s.split(":")[0] for s in states[i]] == [
                "DISPATCHING", "ZOMBIE_REQUEUE", "DISPATCHING", "DISPATCHED"], states[i]
        await check_invariants(store.db, admin)
    finally:
        await stop_all([frozen, rescuer])
        await sim.stop()
