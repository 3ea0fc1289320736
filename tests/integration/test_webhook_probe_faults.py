"""A real `symphony delivery` process SIGKILLed while a held endpoint catches up (migration
webhook_probe): the endpoint was down (held, its new events waiting behind its cursor), came
back, its probe succeeded, and the catch-up calls are in flight when the service dies. A
second service delivers every event; each receiver call is checked with the test's own
Standard Webhooks algorithm. Nothing is lost; duplicates are exactly the interrupted calls."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from dataclasses import dataclass

import pytest
from tests.support.processes import ServiceProcess, service_env, until
from tests.support.webhook_receiver import Receiver, verify_standard_webhook
from tests.support.webhooks import (
    admin,
    deliveries_of,
    events_of,
    hooked_participant,
    pay,
    retire,
    webhook_id,
)

from symphony.db import Database, DatabaseSettings

pytestmark = pytest.mark.integration

THRESHOLD = 60


@dataclass
class OkThenHang(Receiver):
    """Answers the first `ok_answers` calls 204, then never answers (while `hang_after`)."""

    ok_answers: int = 1
    hang_after: bool = True

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.hang_after and self.ok_answers <= 0:
            await asyncio.sleep(3600)
            return
        self.ok_answers -= 1
        await super()._answer(writer)


async def test_sigkill_while_a_held_endpoint_catches_up_loses_nothing(
    isolated_settings: DatabaseSettings, isolated_db: Database
) -> None:
    admin_dsn = isolated_settings.database_url.get_secret_value()  # type: ignore[union-attr]
    receiver = OkThenHang()
    await receiver.start()
    hooked = await hooked_participant(isolated_db, receiver)
    await receiver.stop()  # the endpoint is down (its port stays its own)
    env = service_env(
        admin_dsn, isolated_settings.home, THRESHOLD, SYMPHONY_ENV="development",
        SYMPHONY_WEBHOOK_ALLOW_LOOPBACK="true", SYMPHONY_DELIVERY_POLL_INTERVAL="0.2",
        SYMPHONY_LOG_LEVEL="INFO", SYMPHONY_DELIVERY_READ_TIMEOUT="40",
        SYMPHONY_DELIVERY_TOTAL_TIMEOUT="50", SYMPHONY_DELIVERY_LEASE_SECONDS="60")
    first = second = None
    try:
        await pay(isolated_db, hooked.participant_id, 4)
        first = await ServiceProcess.start(env, "delivery", "--worker-id", "doomed")

        async def held() -> bool:
            assert first is not None and first.alive, "".join(first.lines[-5:]) if first else ""
            rows = await admin(isolated_db, "SELECT held_since FROM symphony.webhook_endpoints "
                                            "WHERE endpoint_id = %s", (hooked.endpoint_id,))
            return rows[0]["held_since"] is not None

        await until(held, "the endpoint to be held after its first failures")
        await pay(isolated_db, hooked.participant_id, 6)  # these wait behind the cursor
        events = await events_of(isolated_db, hooked.participant_id)
        # Back up: the probe gets its 204, every later call hangs (in flight when killed).
        await receiver.start()
        await admin(isolated_db, "UPDATE symphony.webhook_deliveries SET next_attempt_at = now() "
                                 "WHERE participant_id = %s AND status = 'PENDING'",
                    (hooked.participant_id,))

        async def catching_up() -> bool:
            assert first is not None and first.alive
            return len(receiver.received) >= len(events)

        await until(catching_up, "the probe and every catch-up call to reach the receiver")
        first.signal(signal.SIGKILL)
        await first.process.wait()
        in_flight = Counter(c.headers["webhook-id"] for c in receiver.received[1:])
        # The dead service's leases run out (set in the database, not waited for).
        await admin(isolated_db, "UPDATE symphony.webhook_deliveries "
                                 "SET lease_expires_at = now() - interval '1 second' "
                                 "WHERE participant_id = %s AND lease_token IS NOT NULL",
                    (hooked.participant_id,))
        receiver.hang_after = False
        second = await ServiceProcess.start(env, "delivery", "--worker-id", "survivor")

        async def all_delivered() -> bool:
            assert second is not None and second.alive
            rows = await deliveries_of(isolated_db, hooked.participant_id)
            return len(rows) == len(events) and all(r["status"] == "DELIVERED" for r in rows)

        await until(all_delivered, "the survivor to deliver every event")
        seen: Counter[str] = Counter()
        for call in receiver.received:
            verify_standard_webhook(hooked.secret, call.headers, call.body)
            seen[call.headers["webhook-id"]] += 1
        assert set(seen) == {webhook_id(e["event_id"]) for e in events}
        # Twice exactly the calls the kill interrupted (same webhook-id), once every other.
        assert {i for i, n in seen.items() if n > 1} == set(in_flight)
        assert max(seen.values()) == 2
    finally:
        for process in (first, second):
            if process is not None:
                await process.stop()
        await retire(isolated_db, hooked)
        await receiver.stop()
