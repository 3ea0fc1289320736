"""Concurrency proofs (plan, phase 5) against the real server and the real rail simulator.

1. 32+ connections enqueue the same (participant_id, instruction_id, idempotency_key) at the
   same moment: exactly one outbox_id, one registry row, one pending row (I1, I2).
2. 4 workers, each with its own pools and rail client, dispatch a few hundred items while the
   simulator fails a share of calls retryably and hangs on others past the client's timeout:
   every item ends with exactly one terminal row, none is lost, no illegal history, and the
   simulator executed each reference at most once (I6, I7, I10).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from tests.support.outbox import instruction, payload, register_participant, until_drained

from symphony.db import Database, DatabaseSettings, ParticipantNotActiveError, Role, test_only
from symphony.outbox import OutboxStore
from symphony.rails import HttpRailClient
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer
from symphony.services.worker import ExecutorWorker, WorkerConfig

pytestmark = pytest.mark.integration

ENQUEUERS = 32
ROUNDS = 5
WORKERS = 4
ITEMS = 300
TERMINAL_EVERY = 25  # every 25th item is refused by the rail for good


async def test_concurrent_enqueue_of_one_key_makes_one_item(
    isolated_settings: DatabaseSettings, isolated_admin_dsn: str
) -> None:
    settings = isolated_settings.model_copy(
        update={"pool_min_size": ENQUEUERS, "pool_max_size": ENQUEUERS}
    )
    db = await Database.open(settings)
    try:
        for _ in range(ROUNDS):
            # A participant of its own: its sequence shows whether a loser burnt a number.
            same = instruction(participant_id=await register_participant(db))
            barrier = asyncio.Barrier(ENQUEUERS)
            backends: set[int] = set()

            async def enqueue_once(
                same: Any = same, barrier: asyncio.Barrier = barrier,
                backends: set[int] = backends,
            ) -> Any:
                async with db.transaction(Role.INGEST) as tx:
                    # Every caller holds its own connection before any of them enqueues.
                    backends.add(id(tx.connection))
                    await barrier.wait()
                    return await tx.fetch_one("enqueue_payment_outbox", {
                        "instruction_id": same.instruction_id,
                        "idempotency_key": same.idempotency_key,
                        "participant_id": same.participant_id,
                        "rail_type": same.rail_type,
                        "payload": '{"amount": "125.50", "currency": "EUR", '
                                   '"destination": "acct-0001"}',
                    })

            results = await asyncio.gather(*(enqueue_once() for _ in range(ENQUEUERS)))
            assert len(backends) == ENQUEUERS, "each enqueue ran on its own connection"
            assert len({r["outbox_id"] for r in results}) == 1
            assert sum(1 for r in results if r["created"]) == 1
            assert len({r["sequence_id"] for r in results}) == 1
            outbox_id = results[0]["outbox_id"]
            rows = await test_only.query_no_role(
                isolated_admin_dsn,
                "SELECT (SELECT count(*) FROM symphony.payment_instruction_registry "
                "         WHERE instruction_id = %(i)s AND idempotency_key = %(k)s) AS registry,"
                "       (SELECT count(*) FROM symphony.payment_outbox_pending "
                "         WHERE outbox_id = %(o)s) AS pending, "
                "       (SELECT last_sequence_id FROM symphony.participant_outbox_sequences "
                "         WHERE participant_id = %(p)s) AS last_sequence",
                {"i": same.instruction_id, "k": same.idempotency_key, "o": outbox_id,
                 "p": same.participant_id},
            )
            # One item, and no sequence number burnt by the callers that lost the race.
            assert rows == [{"registry": 1, "pending": 1, "last_sequence": 1}]
    finally:
        await db.close()


async def test_concurrent_enqueues_of_one_pair_by_two_participants_make_two_items(
    isolated_settings: DatabaseSettings,
) -> None:
    settings = isolated_settings.model_copy(
        update={"pool_min_size": ENQUEUERS, "pool_max_size": ENQUEUERS}
    )
    db = await Database.open(settings)
    try:
        alice, bob = await register_participant(db), await register_participant(db)
        pair = instruction()
        barrier = asyncio.Barrier(ENQUEUERS)

        async def enqueue_as(participant: str) -> Any:
            async with db.transaction(Role.INGEST) as tx:
                await barrier.wait()
                return participant, await tx.fetch_one("enqueue_payment_outbox", {
                    "instruction_id": pair.instruction_id,
                    "idempotency_key": pair.idempotency_key,
                    "participant_id": participant, "rail_type": pair.rail_type,
                    "payload": '{"amount": "1.00", "currency": "EUR", "destination": "d"}',
                })

        results = await asyncio.gather(*(
            enqueue_as(alice if n % 2 else bob) for n in range(ENQUEUERS)))
        by_participant: dict[str, set[Any]] = {}
        for participant, row in results:
            by_participant.setdefault(participant, set()).add(
                (row["outbox_id"], row["sequence_id"]))
        # One item each, each its participant's first: neither saw nor waited for the other.
        assert {p: len(v) for p, v in by_participant.items()} == {alice: 1, bob: 1}
        assert {s for v in by_participant.values() for _, s in v} == {1}
        assert sum(1 for _, row in results if row["created"]) == 2
    finally:
        await db.close()


async def test_no_enqueue_commits_after_a_revocation(
    isolated_settings: DatabaseSettings, isolated_admin_dsn: str
) -> None:
    """A revocation in progress holds the participant's row: an enqueue that arrives meanwhile
    waits, then sees REVOKED and is refused; nothing of it is written."""
    db = await Database.open(isolated_settings)
    try:
        pid = await register_participant(db)
        late = instruction(participant_id=pid)
        async with db.transaction(Role.CONTROL) as tx:
            await tx.fetch_one("revoke_participant", {"participant_id": pid})
            # Another caller (a context of its own: this task's transaction is not its own).
            waiting = asyncio.create_task(OutboxStore(db).enqueue(late),
                                          context=contextvars.Context())
            # The enqueue is blocked on the participant's row lock (polling the server's view
            # of it, not waiting for luck).
            deadline = time.monotonic() + 30
            while True:
                rows = await test_only.query_no_role(
                    isolated_admin_dsn,
                    "SELECT count(*) AS n FROM pg_stat_activity "
                    " WHERE usename = 'symphony_ingest_svc' AND wait_event_type = 'Lock'")
                if rows[0]["n"] >= 1:
                    break
                assert not waiting.done(), "the enqueue should wait for the revocation"
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        with pytest.raises(ParticipantNotActiveError):
            await waiting
        rows = await test_only.query_no_role(
            isolated_admin_dsn,
            "SELECT count(*) AS n FROM symphony.payment_instruction_registry "
            " WHERE participant_id = %s", (pid,))
        assert rows == [{"n": 0}]
    finally:
        await db.close()


async def test_concurrent_workers_dispatch_each_item_once(make_database: Any) -> None:
    settings: DatabaseSettings = make_database()
    assert settings.database_url is not None
    admin = settings.database_url.get_secret_value()
    # Fast retries so the run ends in seconds; a high ceiling so retries end in DISPATCHED.
    # An ambiguous attempt (a hang, or any answer slower than the 0.3 s dispatch timeout on a
    # loaded machine) is looked up after the settle time: 200 ms here, not the 30 s default,
    # or a few ambiguous attempts in a row outlast the run.
    await test_only.query_no_role(
        admin, "UPDATE symphony.outbox_retry_policy SET max_attempts = 100, "
               "backoff_base_ms = 20, backoff_max_ms = 200, ambiguous_settle_ms = 200")

    sim = RailSimServer(RailSimConfig(port=0, behaviour=RailSimBehaviour(
        retryable_failure_rate=0.2, hang_rate=0.05, hang_seconds=3.0, seed=20261128,
    )))
    await sim.start()
    setup_db = await Database.open(settings)
    dbs: list[Database] = []
    workers: list[ExecutorWorker] = []
    rails: list[HttpRailClient] = []
    try:
        store = OutboxStore(setup_db)
        expected: dict[str, str] = {}
        for n in range(ITEMS):
            terminal = n % TERMINAL_EVERY == 0
            item = instruction(payload=payload(
                destination="FAIL:ACCOUNT_CLOSED" if terminal else f"acct-{n:04d}"))
            result = await store.enqueue(item)
            expected[str(result.outbox_id)] = "FAILED" if terminal else "DISPATCHED"

        for n in range(WORKERS):
            db = await Database.open(settings)
            dbs.append(db)
            rail = HttpRailClient(sim.url)
            rails.append(rail)
            workers.append(ExecutorWorker(OutboxStore(db), rail, WorkerConfig(
                worker_id=f"worker-{n}", batch_size=16, max_concurrency=8,
                dispatch_timeout_seconds=0.3, lookup_timeout_seconds=1.0,
                poll_interval_seconds=0.05, lease_seconds=120, shutdown_grace_seconds=2.0,
            )))
        for worker in workers:
            await worker.start()

        await until_drained(store, admin)
    finally:
        for worker in workers:
            await worker.stop()
        for rail in rails:
            await rail.aclose()
        for db in dbs:
            await db.close()

    try:
        async with httpx.AsyncClient(base_url=sim.url) as client:
            stats = (await client.get("/v1/stats")).json()
    finally:
        await sim.stop()
    await _assert_every_item_ended_once(admin, expected, stats)
    # Every worker did part of the work.
    claimers = await test_only.query_no_role(
        admin, "SELECT DISTINCT worker_id FROM symphony.payment_outbox_attempts "
               " WHERE state = 'DISPATCHING'")
    assert {r["worker_id"] for r in claimers} == {f"worker-{n}" for n in range(WORKERS)}
    await setup_db.close()


async def _assert_every_item_ended_once(
    admin: str, expected: dict[str, str], stats: dict[str, Any]
) -> None:
    terminal = await test_only.query_no_role(
        admin,
        "SELECT outbox_id::text AS id, state::text AS state, count(*) OVER "
        "       (PARTITION BY outbox_id) AS terminal_rows "
        "  FROM symphony.payment_outbox_attempts WHERE state IN ('DISPATCHED', 'FAILED')",
    )
    # None lost, none doubled, each in the state the rail's answer calls for.
    assert {r["id"]: r["state"] for r in terminal} == expected
    assert all(r["terminal_rows"] == 1 for r in terminal)
    pending = await test_only.query_no_role(
        admin, "SELECT count(*) AS n FROM symphony.payment_outbox_pending")
    assert pending == [{"n": 0}]

    # Every history is legal (the auditor's own check).
    history = await test_only.query_no_role(
        admin, "SELECT outbox_id::text AS id, state::text AS state "
               "  FROM symphony.payment_outbox_attempts ORDER BY outbox_id, attempt_no")
    by_item: dict[str, list[str]] = {}
    for row in history:
        by_item.setdefault(row["id"], []).append(row["state"])
    for states in by_item.values():
        assert states[0] == "DISPATCHING"
        assert states[-1] in ("DISPATCHED", "FAILED")
        assert Counter(states)["DISPATCHED"] <= 1

    # The rail executed each reference at most once; every DISPATCHED item exactly once.
    executions: dict[str, int] = stats["executions"]
    assert stats["max_executions_per_reference"] <= 1
    for outbox_id, state in expected.items():
        assert executions.get(outbox_id, 0) == (1 if state == "DISPATCHED" else 0), outbox_id
    # The faults really happened: some items were retried, and some hung past the timeout and
    # were settled by a lookup instead of a second execution.
    retried = [states for states in by_item.values() if "RETRYABLE" in states]
    assert retried, "the simulator's retryable failures should have caused retries"
    timeouts = await test_only.query_no_role(
        admin, "SELECT count(*) AS n FROM symphony.payment_outbox_attempts "
               " WHERE state = 'RETRYABLE' AND error_code = 'RAIL_TIMEOUT'")
    assert timeouts[0]["n"] > 0, "some dispatches should have hung past the client's timeout"
    assert stats["total_calls"] > len(expected)
