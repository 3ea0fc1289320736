"""Webhook test helpers: a participant with an endpoint on a loopback receiver, a delivery
service on the test database, and direct looks at the delivery tables (admin DSN)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from tests.support.outbox import instruction, register_participant
from tests.support.webhook_receiver import Receiver

from symphony.db import Database, test_only
from symphony.outbox import OutboxStore
from symphony.outbox.events import public_event_id
from symphony.services.delivery import DeliveryConfig, DeliveryService
from symphony.webhooks import (
    EVENT_TYPES,
    SecretBox,
    UrlPolicy,
    WebhookSender,
    WebhookStore,
    load_secret_box,
)

LOOPBACK = UrlPolicy(allow_loopback=True)


def webhook_id(event_id: uuid.UUID) -> str:
    """The webhook-id a receiver sees for an event (the event's public id)."""
    return public_event_id(event_id)


def box_of(db: Database) -> SecretBox:
    """The key the test API and delivery service share (the session's SYMPHONY_HOME)."""
    return load_secret_box(db.settings.home)


@dataclass
class Hooked:
    participant_id: str
    endpoint_id: uuid.UUID
    secret: str
    receiver: Receiver


async def hooked_participant(
    db: Database, receiver: Receiver, *, event_types: list[str] | None = None
) -> Hooked:
    pid = await register_participant(db, f"hooks-{uuid.uuid4().hex[:10]}")
    made = await WebhookStore(db, box_of(db)).create_endpoint(
        pid, receiver.url, event_types or list(EVENT_TYPES))
    return Hooked(pid, made.endpoint_id, made.secret, receiver)


async def pay(db: Database, participant_id: str, count: int = 1) -> None:
    store = OutboxStore(db)
    for _ in range(count):
        await store.enqueue(instruction(participant_id=participant_id))


def delivery_service(
    db: Database, *, policy: UrlPolicy = LOOPBACK, **config: Any
) -> tuple[DeliveryService, WebhookSender]:
    settings: dict[str, Any] = {
        "worker_id": f"delivery-test-{uuid.uuid4().hex[:6]}", "lease_seconds": 30,
        "total_timeout_seconds": 3.0, "read_timeout_seconds": 2.0,
        "connect_timeout_seconds": 1.0, "health_interval_seconds": 0,
    }
    settings.update(config)
    cfg = DeliveryConfig(**settings)
    sender = WebhookSender(policy, cfg.limits, ca_bundle=cfg.ca_bundle)
    return DeliveryService(WebhookStore(db), box_of(db), sender, cfg), sender


async def admin(db: Database, sql: str, params: Any = None) -> list[dict[str, Any]]:
    assert db.endpoint is not None
    return await test_only.query_no_role(db.endpoint.admin_dsn, sql, params)


async def deliveries_of(db: Database, participant_id: str) -> list[dict[str, Any]]:
    return await admin(db, "SELECT * FROM symphony.webhook_deliveries WHERE participant_id = %s "
                           "ORDER BY event_seq, created_at", (participant_id,))


async def attempts_of(db: Database, participant_id: str) -> list[dict[str, Any]]:
    return await admin(db, "SELECT * FROM symphony.webhook_delivery_attempts "
                           "WHERE participant_id = %s ORDER BY delivery_id, attempt_no",
                       (participant_id,))


async def events_of(db: Database, participant_id: str) -> list[dict[str, Any]]:
    return await admin(db, "SELECT event_seq, event_id, event_type FROM symphony.payment_events "
                           "WHERE participant_id = %s ORDER BY event_seq", (participant_id,))


async def make_due(db: Database, participant_id: str) -> None:
    """Set every pending delivery of the participant due now (instead of waiting out the
    backoff)."""
    await admin(db, "UPDATE symphony.webhook_deliveries SET next_attempt_at = now() "
                    "WHERE participant_id = %s AND status = 'PENDING'", (participant_id,))


async def retire(db: Database, hooked: Hooked) -> None:
    """Delete the endpoint: its deliveries stop competing with other tests' claims."""
    await admin(db, "SELECT * FROM symphony.delete_webhook_endpoint(%s, %s)",
                (hooked.participant_id, hooked.endpoint_id))
