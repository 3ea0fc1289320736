"""Fault injection on webhook delivery with real `symphony delivery` processes: a SIGKILL in
the middle of calls, and a PostgreSQL restart under a busy service. Each receiver checks every
signature with the test's own Standard Webhooks algorithm. Counted: every event written is
delivered (at least once), and duplicates are exactly the calls a crash interrupted."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from tests.support.processes import ServiceProcess, service_env, until
from tests.support.webhook_receiver import Receiver, verify_standard_webhook
from tests.support.webhooks import (
    admin,
    attempts_of,
    deliveries_of,
    events_of,
    hooked_participant,
    pay,
    retire,
    webhook_id,
)

from symphony.db import Database, DatabaseSettings, EmbeddedServer, bootstrap

pytestmark = pytest.mark.integration

THRESHOLD = 60


def delivery_env(admin_dsn: str, home: Path, **extra: str) -> dict[str, str]:
    return service_env(
        admin_dsn, home, THRESHOLD, SYMPHONY_ENV="development",
        SYMPHONY_WEBHOOK_ALLOW_LOOPBACK="true", SYMPHONY_DELIVERY_POLL_INTERVAL="0.2",
        SYMPHONY_LOG_LEVEL="INFO", **extra)


def delivered_ids(receiver: Receiver, secret: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    for call in receiver.received:
        verify_standard_webhook(secret, call.headers, call.body)
        seen[call.headers["webhook-id"]] += 1
    return seen


async def test_sigkill_mid_delivery_sends_again_with_the_same_webhook_id(
    isolated_settings: DatabaseSettings, isolated_db: Database
) -> None:
    admin_dsn = isolated_settings.database_url.get_secret_value()  # type: ignore[union-attr]
    receiver = Receiver(mode="hang")
    await receiver.start()
    hooked = await hooked_participant(isolated_db, receiver)
    env = delivery_env(admin_dsn, isolated_settings.home,
                       SYMPHONY_DELIVERY_READ_TIMEOUT="40", SYMPHONY_DELIVERY_TOTAL_TIMEOUT="50",
                       SYMPHONY_DELIVERY_LEASE_SECONDS="60")
    first = second = None
    try:
        await pay(isolated_db, hooked.participant_id, 5)
        events = await events_of(isolated_db, hooked.participant_id)
        first = await ServiceProcess.start(env, "delivery", "--worker-id", "doomed")

        async def all_in_flight() -> bool:
            assert first is not None and first.alive, "".join(first.lines[-5:]) if first else ""
            return len(receiver.received) >= len(events)

        await until(all_in_flight, "every event's call to reach the receiver")
        first.signal(signal.SIGKILL)
        await first.process.wait()
        in_flight = {c.headers["webhook-id"] for c in receiver.received}
        rows = await deliveries_of(isolated_db, hooked.participant_id)
        assert {(r["status"], r["claimed_by"]) for r in rows} == {("PENDING", "doomed")}
        # The dead service's leases run out (set in the database, not waited for).
        await admin(isolated_db, "UPDATE symphony.webhook_deliveries "
                                 "SET lease_expires_at = now() - interval '1 second' "
                                 "WHERE participant_id = %s", (hooked.participant_id,))
        receiver.mode = "ok"
        second = await ServiceProcess.start(env, "delivery", "--worker-id", "survivor")

        async def all_delivered() -> bool:
            assert second is not None and second.alive
            rows = await deliveries_of(isolated_db, hooked.participant_id)
            return all(r["status"] == "DELIVERED" for r in rows)

        await until(all_delivered, "the survivor to deliver everything")
        seen = delivered_ids(receiver, hooked.secret)
        # Every event arrived; each one the crash interrupted arrived twice (same id), no
        # other event did.
        assert set(seen) == {webhook_id(e["event_id"]) for e in events}
        assert {i for i, n in seen.items() if n > 1} == in_flight
        assert max(seen.values()) == 2
        attempts = await attempts_of(isolated_db, hooked.participant_id)
        per_delivery: dict[object, list[tuple[str, str | None]]] = {}
        for a in attempts:
            per_delivery.setdefault(a["delivery_id"], []).append((a["outcome"], a["worker_id"]))
        assert all(v == [("LEASE_EXPIRED", "doomed"), ("DELIVERED", "survivor")]
                   for v in per_delivery.values()), per_delivery
    finally:
        for process in (first, second):
            if process is not None:
                await process.stop()
        await retire(isolated_db, hooked)
        await receiver.stop()


async def test_postgres_restart_under_a_busy_delivery_service_loses_nothing(
    tmp_path: Path,
) -> None:
    server = EmbeddedServer(tmp_path / "pgdata")
    dsn = await asyncio.to_thread(server.start)
    home = tmp_path / "home"
    settings = DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(home))
    await bootstrap(settings, zombie_threshold_seconds=THRESHOLD)
    db = await Database.open(settings)
    receiver = Receiver()
    await receiver.start()
    process = None
    try:
        hooked = await hooked_participant(db, receiver)
        process = await ServiceProcess.start(delivery_env(dsn, home), "delivery",
                                             "--worker-id", "restart-delivery")
        await pay(db, hooked.participant_id, 10)

        async def received(at_least: int) -> bool:
            assert process is not None and process.alive, "".join(process.lines[-8:])
            return len(receiver.received) >= at_least

        await until(lambda: received(5), "deliveries before the restart")
        await db.close()
        started = time.monotonic()
        await asyncio.to_thread(server.shutdown)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)
        print(f"\nrestart: PostgreSQL down {time.monotonic() - started:.1f}s")
        db = await Database.open(settings)
        await pay(db, hooked.participant_id, 10)  # events written after the restart too

        async def everything() -> bool:
            assert process is not None and process.alive, "a service died instead of reconnecting"
            events = await events_of(db, hooked.participant_id)
            return set(delivered_ids(receiver, hooked.secret)) >= {
                webhook_id(e["event_id"]) for e in events}

        await until(everything, "every event to be delivered after the restart", limit=90)
        events = await events_of(db, hooked.participant_id)
        seen = delivered_ids(receiver, hooked.secret)
        assert set(seen) == {webhook_id(e["event_id"]) for e in events}
        rows = await deliveries_of(db, hooked.participant_id)

        async def recorded() -> bool:
            rows[:] = await deliveries_of(db, hooked.participant_id)
            return all(r["status"] == "DELIVERED" for r in rows)

        await until(recorded, "every delivery to be recorded")
        duplicates = sum(n - 1 for n in seen.values())
        print(f"restart: {len(events)} events, {sum(seen.values())} calls, {duplicates} "
              "duplicate(s) (calls whose recording met the outage)")
        assert process.alive
        await retire(db, hooked)
    finally:
        if process is not None:
            await process.stop()
        await receiver.stop()
        await db.close()
        await asyncio.to_thread(server.shutdown)
        shutil.rmtree(tmp_path / "pgdata", ignore_errors=True)
