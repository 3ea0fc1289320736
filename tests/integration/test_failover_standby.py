"""Failover: the primary is lost mid-traffic, its synchronous standby is promoted, nothing
acknowledged is lost and nothing is paid twice.

A primary and a streaming standby are built on this machine from the same binaries (the
embedded PostgreSQL 18): `initdb`, `pg_basebackup -R`, the standby named in the primary's
`synchronous_standby_names` (`synchronous_commit = on`: a COMMIT returns once the standby
has flushed it). Both listen on Unix sockets only. `symphony api` and `symphony worker` run as
processes with one multi-host DSN, `host=<primary>,<standby> target_session_attrs=read-write`,
so each new connection reaches whichever of the two is the primary. API clients submit
payments; in the middle of the traffic the primary's processes are all SIGKILLed (no shutdown,
no last WAL sent), and the standby is promoted (`pg_ctl promote`).

What must hold, from the clients' answers and the rail simulator's own record: every payment
answered 201 or 200 exists on the new primary (lost = 0); the rail executed every payment
exactly once (duplicates = 0); a lease taken before the failover still fences after it (its
holder completes once; the same completion again is refused, never recorded twice; a lease
repaired after the failover refuses its old holder); `symphony audit verify` passes on the new
primary. The figures are printed (docs/fault-report.md quotes them).

With asynchronous replication the same loss of the primary loses what the standby had not
received: the second test shows it, deterministically, by detaching the standby first.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from tests.support.invariants import check_invariants
from tests.support.outbox import instruction, register_participant
from tests.support.pg_cluster import Cluster, embedded_bindir, make_root
from tests.support.processes import REPO, ServiceProcess, service_env, stop_all, until

from symphony.db import (
    Database,
    DatabaseSettings,
    DatabaseUnavailableError,
    LeaseFencedError,
    Role,
    bootstrap,
    test_only,
)
from symphony.outbox.access import AccessStore, TokenKind
from symphony.outbox.model import Completion, Outcome
from symphony.outbox.store import OutboxStore
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer

pytestmark = [pytest.mark.integration, pytest.mark.failover]

# Long enough that no lease taken before the failover expires during the test by itself.
THRESHOLD = 120
CLIENTS = 6
PAYMENTS_PER_CLIENT = 15
KILL_AFTER = 30  # acknowledged payments before the primary is lost
STANDBY = "symphony_standby1"


@dataclass
class Pair:
    primary: Cluster
    standby: Cluster
    dsn: str
    """The multi-host admin DSN: primary first, then the standby; only a read-write one."""


@pytest.fixture
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    synchronous = getattr(request, "param", True)
    bindir = embedded_bindir()
    primary = Cluster(bindir, make_root("symphony-primary-"))
    standby: Cluster | None = None
    try:
        primary.init(
            synchronous_standby_names=f"'FIRST 1 ({STANDBY})'" if synchronous else "''",
            synchronous_commit="on",
            wal_level="replica",
            max_wal_senders="4",
        )
        await asyncio.to_thread(primary.start)
        standby = await asyncio.to_thread(
            primary.make_standby, make_root("symphony-standby-"), name=STANDBY)
        await asyncio.to_thread(standby.start)
        await test_only.query_no_role(primary.dsn(), "SELECT 1")
        async with await _admin(primary.dsn()) as conn:
            await conn.execute("CREATE DATABASE symphony")
            if synchronous:
                # The standby streams and is the synchronous one before any payment.
                await _wait_for(conn, "SELECT sync_state FROM pg_stat_replication "
                                      "WHERE application_name = %s", (STANDBY,), "sync")
        dsn = (f"host={primary.root},{standby.root} port={primary.port},{standby.port} "
               "user=postgres dbname=symphony target_session_attrs=read-write")
        yield Pair(primary, standby, dsn)
    finally:
        for cluster in (standby, primary):
            if cluster is not None:
                await asyncio.to_thread(cluster.destroy)


async def _admin(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def _wait_for(conn: Any, query: str, params: tuple[Any, ...], expected: object) -> None:
    async def holds() -> bool:
        row = await (await conn.execute(query, params)).fetchone()
        return row is not None and row[0] == expected

    await until(holds, f"{query} to return {expected!r}")


@dataclass
class Traffic:
    """What the clients saw: one record per request, and the acknowledged payments."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # key -> outbox_id
    requests: list[tuple[float, float, int | str]] = field(default_factory=list)
    in_flight: set[str] = field(default_factory=set)

    def first_success_sent_after(self, moment: float) -> float | None:
        done = [end for start, end, status in self.requests
                if start >= moment and status in (200, 201)]
        return min(done, default=None)


async def test_failover_to_the_synchronous_standby_loses_and_doubles_nothing(
    pair: Pair, tmp_path: Path
) -> None:
    phases: list[tuple[str, float]] = [("start", time.monotonic())]
    home = tmp_path / "home"
    settings = DatabaseSettings(DATABASE_URL=pair.dsn, SYMPHONY_HOME=str(home))
    await bootstrap(settings, zombie_threshold_seconds=THRESHOLD)
    await test_only.query_no_role(
        pair.dsn, "UPDATE symphony.outbox_retry_policy SET backoff_base_ms = 100, "
                  "backoff_max_ms = 500, ambiguous_settle_ms = 0, max_attempts = 100")
    db = await Database.open(settings)
    participant = await register_participant(db)
    token = (await AccessStore(db).issue_token(
        TokenKind.PARTICIPANT, participant_id=participant, label="failover")).token
    # Two leases taken before the failover, by a holder that is not the worker: one to be
    # completed after it, one to be repaired after it.
    store = OutboxStore(db)
    held = [(await store.enqueue(instruction(participant_id=participant))).outbox_id
            for _ in range(2)]
    claimed = {c.outbox_id: c for c in await store.claim("fence-holder", 2, THRESHOLD)}
    assert set(claimed) == set(held)
    await db.close()

    sim = RailSimServer(RailSimConfig(port=0))
    await sim.start()
    # Each rail call takes a while: the primary dies with dispatches in flight, whose outcomes
    # the worker records on the new primary under the leases it took on the old one.
    sim.simulator.set_behaviour(RailSimBehaviour(latency_ms=200))
    env = service_env(pair.dsn, home, THRESHOLD)
    port = _free_port()
    worker = await ServiceProcess.worker(env, sim.url, "failover-worker")
    api = await ServiceProcess.start(env, "api", "--port", str(port))
    traffic = Traffic()
    killed = asyncio.Event()
    figures: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False,
                                     timeout=20) as client:
            async def up() -> bool:
                assert api.alive, "".join(api.lines[-5:])
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(up, "the API to be ready")
            phases.append(("services up", time.monotonic()))

            async def submit(c: int, n: int) -> None:
                key = f"failover-{c}-{n}"
                body = json.dumps({"instruction_id": f"fo-{c}-{n}", "rail_type": "SEPA_CT",
                                   "amount": f"{c + 1}.{n:02d}", "currency": "EUR",
                                   "destination": f"acct-{c}"})
                headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key,
                           "Content-Type": "application/json"}
                for _ in range(600):
                    started = time.monotonic()
                    traffic.in_flight.add(key)
                    try:
                        response = await client.post("/v1/payments", content=body,
                                                      headers=headers)
                        status: int | str = response.status_code
                    except httpx.TransportError as exc:
                        status = type(exc).__name__
                    finally:
                        traffic.in_flight.discard(key)
                    traffic.requests.append((started, time.monotonic(), status))
                    if status in (200, 201):
                        outbox_id = response.json()["outbox_id"]
                        assert traffic.acknowledged.setdefault(key, outbox_id) == outbox_id
                        return
                    # Only a retryable refusal (503 with Retry-After) or no answer at all.
                    if isinstance(status, int):
                        assert status == 503, (key, status, response.text)
                        assert response.headers["retry-after"].isdigit()
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{key} was never acknowledged")

            async def client_loop(c: int) -> None:
                for n in range(PAYMENTS_PER_CLIENT):
                    await submit(c, n)
                    if n == PAYMENTS_PER_CLIENT // 2:
                        await killed.wait()  # every client has traffic after the failover

            async def failover() -> None:
                async def enough() -> bool:
                    return len(traffic.acknowledged) >= KILL_AFTER

                await until(enough, "traffic before the failover")
                figures["in_flight"] = len(traffic.in_flight)
                figures["acknowledged_before"] = len(traffic.acknowledged)
                figures["rail_in_flight"] = sim.simulator.stats()["in_flight"]
                moment = time.monotonic()
                figures["moment"] = moment
                await asyncio.to_thread(pair.primary.kill)
                killed.set()
                await asyncio.to_thread(pair.standby.promote)
                figures["promoted_after_s"] = time.monotonic() - moment

            await asyncio.gather(failover(), *(client_loop(c) for c in range(CLIENTS)))
            assert api.alive and worker.alive, "a service died instead of reconnecting"
            expected = CLIENTS * PAYMENTS_PER_CLIENT
            assert len(traffic.acknowledged) == expected

        phases.append(("every payment acknowledged", time.monotonic()))
        new_primary = pair.standby.dsn("symphony")
        # Nothing acknowledged is lost: every answered payment is on the new primary.
        rows = await test_only.query_no_role(
            new_primary, "SELECT idempotency_key, outbox_id::text AS outbox_id "
                         "  FROM symphony.payment_instruction_registry "
                         " WHERE participant_id = %s", (participant,))
        stored = {r["idempotency_key"]: r["outbox_id"] for r in rows}
        lost = {k for k, i in traffic.acknowledged.items() if stored.get(k) != i}
        assert not lost, f"acknowledged but not on the new primary: {sorted(lost)}"
        assert len(stored) == expected + 2  # and nothing made twice (I1), the two held ones

        db = await Database.open(settings)
        try:
            store = OutboxStore(db)
            first, second = held
            # The lease taken before the failover holds after it: its holder completes once...
            done = await store.complete(Completion(
                outbox_id=first, lease_token=claimed[first].lease_token,
                outcome=Outcome.DISPATCHED, rail_transaction_id="held-before-failover"))
            assert not done.fenced and done.state == "DISPATCHED"
            # ...and the same completion again is fenced, not recorded twice.
            with pytest.raises(LeaseFencedError) as info:
                await store.complete(Completion(
                    outbox_id=first, lease_token=claimed[first].lease_token,
                    outcome=Outcome.DISPATCHED, rail_transaction_id="held-before-failover"))
            assert info.value.code == "LEASE_NOT_HELD"
            # The other lease expires on the new primary: the repair takes it back, the worker
            # dispatches the item, and the old holder's completion is fenced.
            await test_only.query_no_role(
                new_primary, "UPDATE symphony.payment_outbox_pending "
                             "   SET claimed_at = now() - make_interval(secs => %s), "
                             "       lease_expires_at = now() - interval '1 second' "
                             " WHERE outbox_id = %s", (THRESHOLD + 1, second))

            async def repaired() -> bool:
                assert worker.alive
                [row] = await test_only.query_no_role(
                    new_primary, "SELECT count(*) FILTER (WHERE state = 'ZOMBIE_REQUEUE') AS z"
                                 "  FROM symphony.payment_outbox_attempts WHERE outbox_id = %s",
                    (second,))
                return bool(row["z"] == 1)

            await until(repaired, "the worker's repair to requeue the expired lease")
            phases.append(("expired lease repaired", time.monotonic()))
            with pytest.raises(LeaseFencedError):
                await store.complete(Completion(
                    outbox_id=second, lease_token=claimed[second].lease_token,
                    outcome=Outcome.FAILED, error_code="LATE"))

            all_ids = set(traffic.acknowledged.values()) | {str(second)}

            async def all_dispatched() -> bool:
                assert worker.alive, "".join(worker.lines[-10:])
                [row] = await test_only.query_no_role(
                    new_primary, "SELECT count(*) AS n FROM symphony.payment_outbox_attempts "
                                 " WHERE state = 'DISPATCHED'")
                return bool(row["n"] == len(all_ids) + 1)

            await until(all_dispatched, "the worker to dispatch every payment", limit=300)
            phases.append(("every payment dispatched", time.monotonic()))
            stats: dict[str, Any] = sim.simulator.stats()
            # The rail's own record: each payment executed exactly once (the item completed
            # by the test's holder never went to the rail).
            assert set(stats["executions"]) == all_ids
            assert stats["max_executions_per_reference"] == 1
            [ledger] = await test_only.query_no_role(
                new_primary, "SELECT count(*) FILTER (WHERE state = 'DISPATCHED') AS dispatched,"
                             "       count(*) FILTER (WHERE state = 'DISPATCHED' "
                             "                          AND outbox_id = %s) AS first_done "
                             "  FROM symphony.payment_outbox_attempts", (first,))
            assert ledger["first_done"] == 1  # the fenced repeat recorded nothing
            await check_invariants(db, new_primary)
        finally:
            await db.close()

        audit = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "symphony", "audit", "verify", env=env, cwd=str(REPO),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(audit.communicate(), 120)
        assert audit.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])

        phases.append(("audit verify passed", time.monotonic()))
        print("\nphases: " + ", ".join(f"{name} +{at - phases[0][1]:.1f}s"
                                        for name, at in phases))
        moment = figures["moment"]
        back = traffic.first_success_sent_after(moment)
        assert back is not None
        refused = sum(1 for start, _, status in traffic.requests
                      if start >= moment and status not in (200, 201))
        print(f"\nfailover: {expected} payments by {CLIENTS} clients; at the kill "
              f"{figures['acknowledged_before']} acknowledged, {figures['in_flight']} requests "
              f"in flight, {figures['rail_in_flight']} rail calls in flight; standby promoted "
              f"{figures['promoted_after_s']:.1f}s after the kill; first acknowledgement of a "
              f"request sent after the kill {back - moment:.1f}s after it; {refused} requests "
              f"answered 503 or not at all meanwhile; lost 0; rail executions "
              f"{stats['total_executions']} for {len(all_ids)} payments (duplicates 0), "
              f"replays {stats['total_replays']}; fenced completions 2; audit verify passed")
    finally:
        await stop_all([worker, api])
        await sim.stop()


async def test_the_pools_drop_connections_to_the_lost_primary_and_reach_the_new_one(
    pair: Pair, tmp_path: Path
) -> None:
    # A service's pool holds several connections to the primary when it dies. Each of them
    # is discarded (at most one request fails for the whole pool, not one per connection),
    # and the next connections reach the promoted standby through the same multi-host DSN.
    pool = 4
    settings = DatabaseSettings(DATABASE_URL=pair.dsn, SYMPHONY_HOME=str(tmp_path / "home"),
                                SYMPHONY_DB_POOL_MAX_SIZE=pool)
    await bootstrap(settings)
    db = await Database.open(settings)
    try:
        async def server_port(hold: asyncio.Event | None = None) -> int:
            async with db.transaction(Role.READONLY) as tx:
                cur = await tx.connection.execute(
                    "SELECT current_setting('port')::int AS port, pg_is_in_recovery() AS r")
                row = await cur.fetchone()
                if hold is not None:
                    await hold.wait()
                assert row is not None and not row["r"]
                return int(row["port"])

        hold = asyncio.Event()
        busy = [asyncio.create_task(server_port(hold)) for _ in range(pool)]

        async def all_open() -> bool:
            stats = db.pool_stats().get(db.principal_for(Role.READONLY).value, {})
            return stats.get("pool_size") == pool

        await until(all_open, "the pool to open every connection")
        hold.set()
        assert set(await asyncio.gather(*busy)) == {pair.primary.port}

        await asyncio.to_thread(pair.primary.kill)
        await asyncio.to_thread(pair.standby.promote)
        failures: list[str] = []
        for _ in range(3 * pool):
            try:
                port = await server_port()
                break
            except DatabaseUnavailableError as exc:
                failures.append(exc.code)
        else:
            raise AssertionError(f"never reached the new primary: {failures}")
        assert port == pair.standby.port
        assert len(failures) <= 1, failures
        # Whatever the pool holds now is on the new primary.
        ports = await asyncio.gather(*(server_port() for _ in range(pool)))
        assert set(ports) == {pair.standby.port}
        print(f"\npool of {pool} after the failover: {len(failures)} request(s) refused "
              f"({', '.join(failures) or 'none'}), then every connection on the new primary")
    finally:
        await db.close()


async def test_a_commit_the_standby_never_confirmed_is_not_acknowledged(
    pair: Pair, tmp_path: Path
) -> None:
    # The synchronous standby stops confirming (gone, partitioned): a COMMIT waits, for as
    # long as it takes (the statement timeout does not cut it). Canceled (an operator's
    # pg_cancel_backend, a client's cancel request), PostgreSQL keeps the transaction,
    # committed on the primary alone, and answers the COMMIT with a warning only. Acknowledged,
    # such a payment would be lost with the primary: symphony.db refuses it instead
    # (COMMIT_NOT_REPLICATED, retryable). A retry with the same key is no acknowledgement
    # either while the standby is away: the replay takes the participant's row lock, so its own
    # COMMIT waits for the standby too.
    settings = DatabaseSettings(DATABASE_URL=pair.dsn, SYMPHONY_HOME=str(tmp_path / "home"),
                                SYMPHONY_DB_STATEMENT_TIMEOUT_MS=500)
    await bootstrap(settings)
    db = await Database.open(settings)
    try:
        participant = await register_participant(db)
        store = OutboxStore(db)
        before = (await store.enqueue(instruction(participant_id=participant))).outbox_id
        await asyncio.to_thread(pair.standby.detach_from_primary)
        async with await _admin(pair.primary.dsn()) as admin:
            await _wait_for(admin, "SELECT count(*) FROM pg_stat_replication "
                                   " WHERE application_name = %s", (STANDBY,), 0)
            unconfirmed = instruction(participant_id=participant)
            first = asyncio.create_task(store.enqueue(unconfirmed))
            waiting = ("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                       "   AND usename <> 'postgres' AND now() - query_start > interval '1 s'")

            async def commit_waits() -> bool:
                assert not first.done(), first
                return bool(await (await admin.execute(waiting)).fetchall())

            # Waiting past the 500 ms statement timeout: the timeout does not cancel it.
            await until(commit_waits, "the COMMIT to wait for the standby")
            await admin.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                                " WHERE wait_event = 'SyncRep' AND usename <> 'postgres'")
            with pytest.raises(DatabaseUnavailableError) as info:
                await first
            assert info.value.code == "COMMIT_NOT_REPLICATED"
            # The retry with the same key waits for the standby as well (a request deadline
            # ends it: no answer, not an acknowledgement).
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3):
                    await store.enqueue(unconfirmed)
    finally:
        await db.close()
    await asyncio.to_thread(pair.primary.kill)
    await asyncio.to_thread(pair.standby.promote)
    rows = await test_only.query_no_role(
        pair.standby.dsn("symphony"),
        "SELECT outbox_id FROM symphony.payment_instruction_registry WHERE participant_id = %s",
        (participant,))
    # The acknowledged payment survived; the refused one is gone, and nobody was told it
    # existed.
    assert [r["outbox_id"] for r in rows] == [before]


@pytest.mark.parametrize("pair", [False], indirect=True)
async def test_with_asynchronous_replication_the_primary_loss_loses_acknowledged_payments(
    pair: Pair, tmp_path: Path
) -> None:
    # The same pair with `synchronous_standby_names = ''`: a COMMIT returns once the primary
    # has flushed it, whatever the standby has. What the standby had not received when the
    # primary died is gone after the promotion, although every one of those was acknowledged.
    settings = DatabaseSettings(DATABASE_URL=pair.dsn, SYMPHONY_HOME=str(tmp_path / "home"))
    await bootstrap(settings)
    db = await Database.open(settings)
    try:
        participant = await register_participant(db)
        store = OutboxStore(db)
        before = [(await store.enqueue(instruction(participant_id=participant))).outbox_id
                  for _ in range(10)]
        async with await _admin(pair.primary.dsn()) as conn:
            # The standby has replayed everything so far...
            await _wait_for(conn, "SELECT replay_lsn >= pg_current_wal_lsn() "
                                  "  FROM pg_stat_replication WHERE application_name = %s",
                            (STANDBY,), True)
            # ...then stops receiving (a network partition, a slow standby).
            await asyncio.to_thread(pair.standby.detach_from_primary)
            await _wait_for(conn, "SELECT count(*) FROM pg_stat_replication "
                                  " WHERE application_name = %s", (STANDBY,), 0)
        after = [(await store.enqueue(instruction(participant_id=participant))).outbox_id
                 for _ in range(20)]
    finally:
        await db.close()
    await asyncio.to_thread(pair.primary.kill)
    await asyncio.to_thread(pair.standby.promote)
    rows = await test_only.query_no_role(
        pair.standby.dsn("symphony"),
        "SELECT outbox_id FROM symphony.payment_instruction_registry WHERE participant_id = %s",
        (participant,))
    survived = {r["outbox_id"] for r in rows}
    assert set(before) <= survived
    lost = [i for i in after if i not in survived]
    print(f"\nasynchronous replication: {len(before) + len(after)} payments acknowledged, "
          f"{len(lost)} lost with the primary (every one acknowledged after the standby "
          "stopped receiving)")
    assert lost == after


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

