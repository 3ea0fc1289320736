"""Fault injection: PostgreSQL restarts while `symphony worker` and `symphony api` are busy.

A dedicated embedded server (not the session's shared one) with its own SYMPHONY_HOME; the
worker and the API run as processes against it, API clients keep submitting payments, and the
server is stopped (fast shutdown: every connection dropped) and started again in the middle.
The processes reconnect by themselves; every client got a success or a clear retryable error
(503 with Retry-After) and its retries with the same Idempotency-Key converge on one payment;
no payment is lost or made twice; the rail executed each once; the invariants hold.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.invariants import check_invariants
from tests.support.outbox import register_participant
from tests.support.processes import ServiceProcess, service_env, stop_all, until

from symphony.db import Database, DatabaseSettings, EmbeddedServer, bootstrap, test_only
from symphony.outbox.access import AccessStore, TokenKind
from symphony.services.rail_sim import RailSimConfig, RailSimServer

pytestmark = pytest.mark.integration

THRESHOLD = 60
CLIENTS = 6
PAYMENTS_PER_CLIENT = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_postgres_restart_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "pgdata")
    dsn = await asyncio.to_thread(server.start)
    home = tmp_path / "home"
    settings = DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(home))
    await bootstrap(settings, zombie_threshold_seconds=THRESHOLD)
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET backoff_base_ms = 100, "
             "backoff_max_ms = 500, ambiguous_settle_ms = 0, max_attempts = 100")
    db = await Database.open(settings)
    participant = await register_participant(db)
    token = (await AccessStore(db).issue_token(
        TokenKind.PARTICIPANT, participant_id=participant, label="restart")).token
    await db.close()
    sim = RailSimServer(RailSimConfig(port=0))
    await sim.start()
    env = service_env(dsn, home, THRESHOLD)
    port = _free_port()
    worker = await ServiceProcess.worker(env, sim.url, "restart-worker")
    api = await ServiceProcess.start(env, "api", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    outcomes: dict[str, list[int]] = {}
    created: dict[str, set[str]] = {}
    retry_afters: list[str] = []
    errors: list[str] = []
    restarted = asyncio.Event()
    try:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=20) as client:
            async def up() -> bool:
                assert api.alive, "".join(api.lines[-5:])
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(up, "the API to be ready")

            async def submit(c: int, n: int) -> None:
                key = f"restart-{c}-{n}"
                body = {"instruction_id": f"instr-{c}-{n}", "rail_type": "SEPA_CT",
                        "amount": f"{c + 1}.{n:02d}", "currency": "EUR",
                        "destination": f"acct-{c}"}
                statuses = outcomes.setdefault(key, [])
                for _ in range(400):
                    try:
                        response = await client.post(
                            "/v1/payments", content=json.dumps(body),
                            headers={"Authorization": f"Bearer {token}",
                                     "Idempotency-Key": key,
                                     "Content-Type": "application/json"})
                    except httpx.TransportError as exc:
                        errors.append(f"{key}: {type(exc).__name__}")
                        await asyncio.sleep(0.2)
                        continue
                    statuses.append(response.status_code)
                    if response.status_code in (200, 201):
                        created.setdefault(key, set()).add(response.json()["outbox_id"])
                        return
                    assert response.status_code == 503, (key, response.status_code,
                                                         response.text)
                    assert response.json()["code"], response.text
                    retry_afters.append(response.headers["retry-after"])
                    await asyncio.sleep(min(float(response.headers["retry-after"]), 0.5))
                raise AssertionError(f"{key} never succeeded: {statuses}")

            async def client_loop(c: int) -> None:
                for n in range(PAYMENTS_PER_CLIENT):
                    if n == 2 * PAYMENTS_PER_CLIENT // 3:
                        await restarted.wait()  # part of every client's work after it
                    await submit(c, n)
                    # A replay of an earlier key, also across the restart: the same payment.
                    if n % 4 == 3:
                        await submit(c, n - 3)

            async def restart() -> None:
                await until(lambda: _count(created, CLIENTS * 2), "work before the restart")
                started = time.monotonic()
                await asyncio.to_thread(server.shutdown)
                await asyncio.sleep(1.0)  # the outage: requests meanwhile must get 503
                await asyncio.to_thread(server.start)
                restarted.set()
                print(f"\nrestart: PostgreSQL down {time.monotonic() - started:.1f}s")

            await asyncio.gather(restart(), *(client_loop(c) for c in range(CLIENTS)))
            assert api.alive and worker.alive, "a service died instead of reconnecting"
            expected = CLIENTS * PAYMENTS_PER_CLIENT
            assert len(created) == expected
            assert all(len(ids) == 1 for ids in created.values()), "a key made two payments"

            db = await Database.open(settings)
            try:
                async def all_dispatched() -> bool:
                    assert worker.alive
                    [row] = await test_only.query_no_role(dsn, """
                        SELECT (SELECT count(*) FROM symphony.payment_instruction_registry)
                                   AS items,
                               (SELECT count(*) FROM symphony.payment_outbox_attempts
                                 WHERE state = 'DISPATCHED') AS dispatched""")
                    assert row["items"] == expected, row  # nothing lost, nothing doubled
                    progress.append(row)
                    return bool(row["dispatched"] == expected)

                progress: list[dict[str, Any]] = []
                try:
                    await until(all_dispatched, "the reconnected worker to dispatch everything")
                except AssertionError:
                    raise AssertionError(f"{progress[-1:]} worker log: "
                                         + "".join(worker.lines[-15:])) from None

                stats: dict[str, Any] = sim.simulator.stats()
                ids = {i for s in created.values() for i in s}
                assert set(stats["executions"]) == ids
                assert stats["max_executions_per_reference"] == 1
                await check_invariants(db, dsn)
            finally:
                await db.close()
            saw_503 = sum(1 for s in outcomes.values() if 503 in s)
            print(f"restart: {expected} payments by {CLIENTS} clients, {saw_503} saw 503 "
                  f"(Retry-After {sorted(set(retry_afters))}), {len(errors)} transport "
                  f"errors, all converged; executions {stats['total_executions']}, "
                  f"replays {stats['total_replays']}")
            assert all(r.isdigit() and int(r) > 0 for r in retry_afters)
    finally:
        await stop_all([worker, api])
        await sim.stop()
        await asyncio.to_thread(server.shutdown)
        shutil.rmtree(tmp_path / "pgdata", ignore_errors=True)


async def _count(created: dict[str, set[str]], at_least: int) -> bool:
    return len(created) >= at_least
