"""The delivery service against a loopback receiver that checks every signature with the
Standard Webhooks algorithm written in the test (tests/support/webhook_receiver.py), not the
product's signer. The service runs cycle by cycle (`run_once`); backoff is skipped by setting
next-attempt times in the database, never by waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from tests.support.outbox import instruction
from tests.support.webhook_receiver import Receiver, SignatureInvalid, verify_standard_webhook
from tests.support.webhooks import (
    Hooked,
    admin,
    attempts_of,
    box_of,
    deliveries_of,
    delivery_service,
    events_of,
    hooked_participant,
    make_due,
    pay,
    retire,
    webhook_id,
)

from symphony.db import Database, LeaseFencedError
from symphony.outbox import Completion, OutboxStore, Outcome
from symphony.services.delivery import DeliveryService
from symphony.webhooks import DeliveryOutcome, WebhookStore


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
    svc, sender = delivery_service(isolated_db)
    yield svc
    await sender.aclose()


async def drain(service: DeliveryService, cycles: int = 10) -> None:
    for _ in range(cycles):
        cycle = await service.run_once()
        if cycle.claimed == 0 and cycle.deliveries_created == 0:
            return


def verified_ids(receiver: Receiver, secret: str) -> list[str]:
    ids = []
    for call in receiver.received:
        verify_standard_webhook(secret, call.headers, call.body)
        ids.append(call.headers["webhook-id"])
    return ids


async def test_every_event_is_delivered_signed_per_standard_webhooks(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await pay(isolated_db, hooked.participant_id, 5)
    await drain(service)
    events = await events_of(isolated_db, hooked.participant_id)
    assert len(events) >= 5
    ids = verified_ids(receiver, hooked.secret)
    # Counted: every event written is delivered, exactly once without a crash.
    assert sorted(ids) == sorted(webhook_id(e["event_id"]) for e in events)
    call = receiver.received[0]
    assert call.event["id"] == call.headers["webhook-id"]
    assert call.event["type"] in {e["event_type"] for e in events}
    assert call.headers["content-type"] == "application/json"
    assert call.path == "/hooks"
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert {r["status"] for r in rows} == {"DELIVERED"}
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert [a["outcome"] for a in attempts] == ["DELIVERED"] * len(rows)
    assert all(a["http_status"] == 204 and a["latency_ms"] >= 0 for a in attempts)


async def test_the_reference_check_refuses_tampering_a_wrong_secret_and_old_timestamps(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await pay(isolated_db, hooked.participant_id)
    await drain(service)
    call = receiver.received[0]
    verify_standard_webhook(hooked.secret, call.headers, call.body)
    with pytest.raises(SignatureInvalid):
        verify_standard_webhook(hooked.secret, call.headers, call.body.replace(b"}", b" }", 1))
    other = await hooked_participant(isolated_db, receiver)
    try:
        with pytest.raises(SignatureInvalid):
            verify_standard_webhook(other.secret, call.headers, call.body)
    finally:
        await retire(isolated_db, other)
    with pytest.raises(SignatureInvalid, match="tolerance"):
        verify_standard_webhook(hooked.secret, call.headers, call.body, now=time.time() + 3600)
    with pytest.raises(SignatureInvalid, match="tolerance"):
        verify_standard_webhook(hooked.secret, call.headers, call.body, now=time.time() - 3600)


async def test_receiver_down_then_up_every_event_arrives_and_the_backoff_shows(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    await receiver.stop()
    await pay(isolated_db, hooked.participant_id, 3)
    for _ in range(3):  # three failed rounds, each due again at once
        await drain(service)
        await make_due(isolated_db, hooked.participant_id)
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert attempts and {a["outcome"] for a in attempts} == {"RETRY"}
    assert {a["error_class"] for a in attempts} == {"connect_error"}
    # The backoff the service asked for: 5 s, 20 s, 80 s nominal, +-20% jitter.
    waits = {}
    for a in attempts:
        waits.setdefault(a["attempt_no"], []).append(
            (a["next_attempt_at"] - a["recorded_at"]).total_seconds())
    for attempt_no, nominal in ((1, 5), (2, 20), (3, 80)):
        assert all(0.79 * nominal <= w <= 1.21 * nominal for w in waits[attempt_no]), waits
    await receiver.start()
    await make_due(isolated_db, hooked.participant_id)
    await drain(service)
    events = await events_of(isolated_db, hooked.participant_id)
    assert sorted(set(verified_ids(receiver, hooked.secret))) == sorted(
        webhook_id(e["event_id"]) for e in events)
    rows = await deliveries_of(isolated_db, hooked.participant_id)
    assert {(r["status"], r["attempt_count"]) for r in rows} == {("DELIVERED", 4)}


@pytest.mark.parametrize(
    ("mode", "error_class", "status"),
    [("status:500", "http_5xx", 500), ("status:404", "http_4xx", 404),
     ("redirect", "redirect_not_followed", 302), ("hang", "timeout", None)],
)
async def test_a_failed_answer_is_recorded_and_retried(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService,
    mode: str, error_class: str, status: int | None,
) -> None:
    receiver.mode = mode
    receiver.redirect_to = receiver.url + "/moved"
    await pay(isolated_db, hooked.participant_id)
    started = time.monotonic()
    await drain(service, cycles=1)
    # The read deadline (2 s in these tests) bounds a receiver that never answers.
    assert time.monotonic() - started < 10
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert [(a["outcome"], a["error_class"], a["http_status"]) for a in attempts] == [
        ("RETRY", error_class, status)]
    if status in (500, 404):
        # A bounded, sanitized excerpt of the answer: printable ASCII, at most 256 characters.
        excerpt = attempts[0]["response_excerpt"]
        assert excerpt.startswith("answer") and len(excerpt) <= 256
        assert all(" " <= ch <= "~" for ch in excerpt)
    # The redirect was not followed: one request only, to the endpoint's own path.
    assert [c.path for c in receiver.received] == ["/hooks"]


async def test_a_ten_megabyte_answer_is_not_read(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    receiver.mode = "huge"
    await pay(isolated_db, hooked.participant_id)
    await drain(service)
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert [(a["outcome"], a["http_status"]) for a in attempts] == [("DELIVERED", 200)]
    assert len(attempts[0]["response_excerpt"]) <= 256
    # The sender stopped reading: the receiver could not push the whole body through.
    assert receiver.huge_bytes_sent < 10 * 1024 * 1024


async def test_an_endpoint_that_never_recovers_is_marked_failing_and_gives_up(
    isolated_db: Database, hooked: Hooked, receiver: Receiver
) -> None:
    svc, sender = delivery_service(isolated_db, failing_after_failures=3, max_attempts=4)
    try:
        receiver.mode = "status:503"
        await pay(isolated_db, hooked.participant_id)
        for _ in range(6):
            await drain(svc)
            await make_due(isolated_db, hooked.participant_id)
        endpoint = (await WebhookStore(isolated_db).endpoints_of(hooked.participant_id))[0]
        assert endpoint.failing_since is not None and endpoint.consecutive_failures >= 3
        rows = await deliveries_of(isolated_db, hooked.participant_id)
        assert {(r["status"], r["attempt_count"]) for r in rows} == {("FAILED", 4)}
        attempts = await attempts_of(isolated_db, hooked.participant_id)
        assert [a["outcome"] for a in attempts][-1] == "FAILED"
        assert svc.metrics.endpoints_failing._value.get() >= 1  # the gauge operators alert on
        failing = await WebhookStore(isolated_db).ops_endpoints(status="FAILING")
        assert hooked.endpoint_id in {r["endpoint_id"] for r in failing}
        # A replay (the receiver is fixed) delivers the event again, same webhook-id.
        receiver.mode = "ok"
        replay = await WebhookStore(isolated_db).replay(rows[0]["delivery_id"], "test operator")
        await drain(svc)
        assert receiver.received[-1].headers["webhook-id"] == webhook_id(rows[0]["event_id"])
        verify_standard_webhook(hooked.secret, receiver.received[-1].headers,
                                receiver.received[-1].body)
        again = await admin(isolated_db, "SELECT status FROM symphony.webhook_deliveries "
                                         "WHERE delivery_id = %s", (replay["delivery_id"],))
        assert again == [{"status": "DELIVERED"}]
        endpoint = (await WebhookStore(isolated_db).endpoints_of(hooked.participant_id))[0]
        assert endpoint.failing_since is None  # a success ends the failing mark
    finally:
        await sender.aclose()


async def test_a_rotated_secret_overlaps_both_signatures_are_sent(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    store = WebhookStore(isolated_db, box_of(isolated_db))
    rotated = await store.rotate_secret(hooked.participant_id, hooked.endpoint_id, 3600)
    await pay(isolated_db, hooked.participant_id)
    await drain(service)
    call = receiver.received[-1]
    assert len(call.headers["webhook-signature"].split(" ")) == 2
    verify_standard_webhook(hooked.secret, call.headers, call.body)
    verify_standard_webhook(rotated.secret, call.headers, call.body)
    # After the overlap only the new secret signs.
    await admin(isolated_db, "UPDATE symphony.webhook_endpoint_secrets SET expires_at = now() "
                             "WHERE endpoint_id = %s AND secret_no = 1", (hooked.endpoint_id,))
    await pay(isolated_db, hooked.participant_id)
    await drain(service)
    call = receiver.received[-1]
    assert len(call.headers["webhook-signature"].split(" ")) == 1
    verify_standard_webhook(rotated.secret, call.headers, call.body)
    with pytest.raises(SignatureInvalid):
        verify_standard_webhook(hooked.secret, call.headers, call.body)


async def test_a_disabled_endpoint_gets_nothing_until_enabled_then_everything(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    store = WebhookStore(isolated_db)
    await store.set_enabled(hooked.endpoint_id, False, "receiver maintenance")
    await pay(isolated_db, hooked.participant_id, 2)
    await drain(service)
    assert receiver.received == []
    await store.set_enabled(hooked.endpoint_id, True, "maintenance over")
    await drain(service)
    events = await events_of(isolated_db, hooked.participant_id)
    assert sorted(verified_ids(receiver, hooked.secret)) == sorted(
        webhook_id(e["event_id"]) for e in events)


async def test_an_expired_lease_is_recorded_and_the_event_sent_again_with_its_id(
    isolated_db: Database, hooked: Hooked, receiver: Receiver, service: DeliveryService
) -> None:
    # A service that claimed and died: its lease is set to have expired.
    await pay(isolated_db, hooked.participant_id)
    store = WebhookStore(isolated_db)
    await store.fan_out(100, 100)
    dead = await store.claim("dead-service", 100, 60)
    mine = [d for d in dead if d.participant_id == hooked.participant_id]
    assert len(mine) == 1
    await admin(isolated_db, "UPDATE symphony.webhook_deliveries "
                             "SET lease_expires_at = now() - interval '1 second', "
                             "next_attempt_at = now() - interval '1 second' "
                             "WHERE delivery_id = %s", (mine[0].delivery_id,))
    await drain(service)
    attempts = await attempts_of(isolated_db, hooked.participant_id)
    assert [(a["attempt_no"], a["outcome"], a["worker_id"]) for a in attempts] == [
        (1, "LEASE_EXPIRED", "dead-service"), (2, "DELIVERED", service.config.worker_id)]
    assert receiver.received[0].headers["webhook-id"] == webhook_id(mine[0].event_id)
    # The dead service's late completion is fenced: nothing is written twice.
    with pytest.raises(LeaseFencedError):
        await store.complete(mine[0], DeliveryOutcome.DELIVERED, retry_after_seconds=None,
                             http_status=200, latency_ms=1, error_class=None,
                             response_excerpt=None, started_at=None, failing_after=10)
    assert len(await attempts_of(isolated_db, hooked.participant_id)) == 2


async def test_a_new_endpoint_starts_after_the_events_already_written(
    isolated_db: Database, receiver: Receiver, service: DeliveryService
) -> None:
    first = await hooked_participant(isolated_db, receiver)
    try:
        await pay(isolated_db, first.participant_id, 2)
        second = WebhookStore(isolated_db, box_of(isolated_db))
        later = await second.create_endpoint(first.participant_id, receiver.url,
                                             ["payment.created"])
        await pay(isolated_db, first.participant_id, 1)
        await drain(service)
        rows = await deliveries_of(isolated_db, first.participant_id)
        by_endpoint: dict[object, int] = {}
        for r in rows:
            by_endpoint[r["endpoint_id"]] = by_endpoint.get(r["endpoint_id"], 0) + 1
        assert by_endpoint[later.endpoint_id] == 1
        assert by_endpoint[first.endpoint_id] >= 3
        await second.delete_endpoint(first.participant_id, later.endpoint_id)
    finally:
        await retire(isolated_db, first)


async def test_payments_never_wait_for_the_webhook_tables(
    isolated_db: Database, hooked: Hooked
) -> None:
    """Every webhook table locked ACCESS EXCLUSIVE (nothing may even read them) while a
    payment of a participant with an endpoint is accepted, claimed and dispatched: no payment
    transaction touches a webhook table, so none waits (each step bounded by 10 s; the
    statement and lock timeouts would fail it otherwise)."""
    assert isolated_db.endpoint is not None
    async with await psycopg.AsyncConnection.connect(isolated_db.endpoint.admin_dsn) as locker:
        await locker.execute(
            "LOCK TABLE symphony.webhook_endpoints, symphony.webhook_endpoint_secrets, "
            "symphony.webhook_deliveries, symphony.webhook_delivery_attempts "
            "IN ACCESS EXCLUSIVE MODE")
        store = OutboxStore(isolated_db)
        created = await asyncio.wait_for(
            store.enqueue(instruction(participant_id=hooked.participant_id)), 10)
        claimed = await asyncio.wait_for(store.claim("no-wait-worker", 1000, 60), 10)
        for item in claimed:
            await asyncio.wait_for(store.complete(Completion(
                item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                rail_transaction_id=f"rail-{item.outbox_id.hex[:12]}")), 10)
        assert created.outbox_id in {item.outbox_id for item in claimed}
        await locker.rollback()
    # The events were written meanwhile, and are delivered once the tables are free.
    types = [e["event_type"] for e in await events_of(isolated_db, hooked.participant_id)]
    assert types == ["payment.created", "payment.dispatched"]
