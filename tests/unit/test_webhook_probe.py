"""An endpoint that is down costs one probe at a time (migration webhook_probe): its first
failure holds it, its new events wait behind its cursor, at most one of its deliveries is in
flight, and the first success releases it and every event past the cursor is delivered, in
order and signed (checked with the test's own Standard Webhooks algorithm). The service runs
cycle by cycle (`run_once`); backoff and leases are set in the database, never waited for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.webhook_receiver import Receiver, verify_standard_webhook
from tests.support.webhooks import (
    Hooked,
    admin,
    attempts_of,
    deliveries_of,
    delivery_service,
    events_of,
    hooked_participant,
    make_due,
    pay,
    retire,
    webhook_id,
)

from symphony.db import Database
from symphony.services.delivery import DeliveryService
from symphony.webhooks import WebhookStore


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def hooked(isolated_db: Database, receiver: Receiver) -> AsyncIterator[Hooked]:
    h = await hooked_participant(isolated_db, receiver)
    yield h
    await retire(isolated_db, h)


@pytest.fixture
async def service(isolated_db: Database) -> AsyncIterator[DeliveryService]:
    # Two calls per cycle, one at a time: the order of the calls is the order of the claim.
    svc, sender = delivery_service(isolated_db, batch_size=2, max_concurrency=1)
    yield svc
    await sender.aclose()


async def endpoint_row(db: Database, hooked: Hooked) -> dict[str, Any]:
    rows = await admin(db, "SELECT * FROM symphony.webhook_endpoints WHERE endpoint_id = %s",
                       (hooked.endpoint_id,))
    return rows[0]


async def hold(db: Database, hooked: Hooked, service: DeliveryService, receiver: Receiver,
               payments: int) -> None:
    """The receiver goes down while `payments` payments' events wait: the first cycle's two
    calls fail, which holds the endpoint."""
    await receiver.stop()
    await pay(db, hooked.participant_id, payments)
    cycle = await service.run_once()
    assert (cycle.claimed, cycle.retried) == (2, 2)


async def test_the_first_failure_holds_the_endpoint_and_takes_back_what_was_not_sent(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await hold(isolated_db, hooked, service, receiver, 5)
    events = await events_of(isolated_db, hooked.participant_id)
    endpoint = await endpoint_row(isolated_db, hooked)
    assert endpoint["held_since"] is not None and endpoint["consecutive_failures"] == 2
    assert endpoint["failing_since"] is None  # 2 failures + 3 events waiting < 10
    # The two attempted deliveries stay (with their attempts); the three nobody sent are gone
    # and the cursor stands before the oldest of them, so they are fanned out again later.
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert [(r["event_seq"], r["attempt_count"], r["status"]) for r in rows] == [
        (events[0]["event_seq"], 1, "PENDING"), (events[1]["event_seq"], 1, "PENDING")]
    assert endpoint["event_cursor"] == events[1]["event_seq"]
    health = await WebhookStore(isolated_db).health()
    assert health["endpoints_held"] >= 1 and health["events_waiting"] >= 3
    listed = {r["endpoint_id"]: r for r in await WebhookStore(isolated_db).ops_endpoints()}
    assert listed[hooked.endpoint_id]["held_since"] is not None
    assert listed[hooked.endpoint_id]["events_waiting"] == 3


async def test_a_held_endpoint_has_at_most_one_delivery_in_flight_and_no_new_ones(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await hold(isolated_db, hooked, service, receiver, 5)
    await pay(isolated_db, hooked.participant_id, 20)  # more events while it is down
    store = WebhookStore(isolated_db)
    made = await store.fan_out(1000, 1000)
    await make_due(isolated_db, hooked.participant_id)  # both backoffs over
    first = [d for d in await store.claim("probe-a", 100, 60)
             if d.participant_id == hooked.participant_id]
    second = [d for d in await store.claim("probe-b", 100, 60)
              if d.participant_id == hooked.participant_id]
    # One probe (the oldest event first), none beside it while it is leased, and the 20 new
    # payments' events made no delivery: they wait behind the cursor.
    events = await events_of(isolated_db, hooked.participant_id)
    assert [d.event_seq for d in first] == [events[0]["event_seq"]]
    assert second == []
    assert len(await deliveries_of(isolated_db, hooked.participant_id)) == 2
    assert made.deliveries == 0
    # Cycle after cycle, the service sends one call at a time to it, and nothing new.
    await admin(isolated_db, "UPDATE symphony.webhook_deliveries "
                             "SET lease_expires_at = now() - interval '1 second' "
                             "WHERE participant_id = %s AND lease_token IS NOT NULL",
                (hooked.participant_id,))
    for _ in range(4):
        await make_due(isolated_db, hooked.participant_id)
        cycle = await service.run_once()
        assert cycle.claimed <= 1 and cycle.deliveries_created == 0
    assert len(await deliveries_of(isolated_db, hooked.participant_id)) == 2
    # Failed attempts (2 + the probes') and the events waiting behind the cursor (23) count
    # toward the failing mark (10 in a row): it is failing, and shows.
    endpoint = await endpoint_row(isolated_db, hooked)
    assert endpoint["consecutive_failures"] == 6 and endpoint["held_since"] is not None
    assert endpoint["failing_since"] is not None
    failing = await WebhookStore(isolated_db).ops_endpoints(status="FAILING")
    assert hooked.endpoint_id in {r["endpoint_id"] for r in failing}


async def test_recovery_delivers_every_event_past_the_cursor_in_order_signed_once(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await hold(isolated_db, hooked, service, receiver, 5)
    await pay(isolated_db, hooked.participant_id, 7)
    await receiver.start()  # the same port: the endpoint is back
    await make_due(isolated_db, hooked.participant_id)
    for _ in range(20):
        cycle = await service.run_once()
        if cycle.claimed == 0 and cycle.deliveries_created == 0:
            break
    events = await events_of(isolated_db, hooked.participant_id)
    assert len(events) == 12
    ids = []
    for call in receiver.received:
        verify_standard_webhook(hooked.secret, call.headers, call.body)
        ids.append(call.headers["webhook-id"])
    # Every event once (no crash, no duplicate), in event order: the probe (the oldest),
    # then the one released from its backoff, then the fan-out from the cursor.
    assert ids == [webhook_id(e["event_id"]) for e in events]
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"DELIVERED"}
    endpoint = await endpoint_row(isolated_db, hooked)
    assert endpoint["held_since"] is None and endpoint["failing_since"] is None
    assert endpoint["event_cursor"] == events[-1]["event_seq"]


async def test_a_service_killed_mid_catch_up_loses_nothing(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await hold(isolated_db, hooked, service, receiver, 4)
    await pay(isolated_db, hooked.participant_id, 6)
    await receiver.start()
    await make_due(isolated_db, hooked.participant_id)
    assert (await service.run_once()).delivered == 1  # the probe: released
    # A service fans out and claims the catch-up, then dies before it records anything.
    store = WebhookStore(isolated_db)
    await store.fan_out(1000, 1000)
    doomed = [d for d in await store.claim("doomed", 100, 60)
              if d.participant_id == hooked.participant_id]
    assert len(doomed) >= 2
    await admin(isolated_db, "UPDATE symphony.webhook_deliveries "
                             "SET lease_expires_at = now() - interval '1 second' "
                             "WHERE participant_id = %s AND claimed_by = 'doomed'",
                (hooked.participant_id,))
    for _ in range(20):
        cycle = await service.run_once()
        if cycle.claimed == 0 and cycle.deliveries_created == 0:
            break
    events = await events_of(isolated_db, hooked.participant_id)
    seen = [c.headers["webhook-id"] for c in receiver.received]
    for call in receiver.received:
        verify_standard_webhook(hooked.secret, call.headers, call.body)
    assert sorted(seen) == sorted(webhook_id(e["event_id"]) for e in events)
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert {r["status"] for r in rows} == {"DELIVERED"} and len(rows) == len(events)
    lost = [a for a in await attempts_of(isolated_db, hooked.participant_id)
            if a["outcome"] == "LEASE_EXPIRED"]
    assert sorted(a["delivery_id"] for a in lost) == sorted(d.delivery_id for d in doomed)


async def test_a_refused_event_does_not_hold_the_endpoint(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    # A plain 4xx is the receiver refusing that event: it keeps its own retries, the rest go on.
    receiver.mode = "status:422"
    await pay(isolated_db, hooked.participant_id, 3)
    await service.run_once()
    endpoint = await endpoint_row(isolated_db, hooked)
    assert endpoint["held_since"] is None and endpoint["consecutive_failures"] == 2
    receiver.mode = "ok"
    for _ in range(5):
        await service.run_once()
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert [r["status"] for r in rows] == ["PENDING", "PENDING", "DELIVERED"]
    # A 503 is the endpoint's: it holds.
    receiver.mode = "status:503"
    await make_due(isolated_db, hooked.participant_id)
    await service.run_once()
    assert (await endpoint_row(isolated_db, hooked))["held_since"] is not None


async def test_a_replay_on_a_held_endpoint_is_never_taken_back_and_releases_it(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await hold(isolated_db, hooked, service, receiver, 3)
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    store = WebhookStore(isolated_db)
    replay = await store.replay(rows[0]["delivery_id"], "test operator")
    assert replay["result"] == "REPLAYED"
    await receiver.start()
    for _ in range(10):
        cycle = await service.run_once()
        if cycle.claimed == 0 and cycle.deliveries_created == 0:
            break
    # The replay was the probe (due at once; the others wait out their backoff), its success
    # released the endpoint, and every event arrived.
    again = await admin(isolated_db, "SELECT status FROM symphony.webhook_deliveries "
                                     "WHERE delivery_id = %s", (replay["delivery_id"],))
    assert again == [{"status": "DELIVERED"}]
    events = await events_of(isolated_db, hooked.participant_id)
    assert {c.headers["webhook-id"] for c in receiver.received} == {
        webhook_id(e["event_id"]) for e in events}
    assert (await endpoint_row(isolated_db, hooked))["held_since"] is None
