"""Typed access to the webhook functions, each one named query through `symphony.db`.

Participants' endpoint management runs as `symphony_webhooks` (the API's role); the
operator's reads and actions as `symphony_webhooks` from the API or `symphony_control` from
the command line; the delivery service's fan-out, claim and completion as
`symphony_delivery`. No caller reads a table directly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from symphony.db import Database, Role
from symphony.webhooks.secretbox import SecretBox
from symphony.webhooks.signing import new_secret, secret_text

EVENT_TYPES: Final = (
    "payment.created", "payment.dispatched", "payment.failed", "payment.canceled",
    "payment.under_review",
)
MAX_OVERLAP_SECONDS: Final = 7 * 24 * 3600
DEFAULT_OVERLAP_SECONDS: Final = 24 * 3600
# The reason recorded for a command-line replay given none (the record needs one).
COMMAND_LINE_REPLAY_REASON: Final = "no reason given (command line)"
REPLAYED: Final = "REPLAYED"


class DeliveryOutcome(StrEnum):
    DELIVERED = "DELIVERED"
    RETRY = "RETRY"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: UUID
    url: str
    event_types: list[str]
    description: str
    status: str
    consecutive_failures: int
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error_class: str | None
    live_secrets: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CreatedEndpoint:
    """A new endpoint. `secret` (`whsec_...`) is the only copy shown: show it once."""

    endpoint_id: UUID
    url: str
    event_types: list[str]
    description: str
    status: str
    created_at: datetime
    secret: str


@dataclass(frozen=True, slots=True)
class RotatedSecret:
    endpoint_id: UUID
    secret_no: int
    previous_expires_at: datetime
    secret: str


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    participant_id: str
    delivery_id: UUID
    endpoint_id: UUID
    url: str
    event_seq: int
    event_id: UUID
    event_type: str
    outbox_id: UUID
    event_created_at: datetime
    payload: Any
    attempt_no: int
    lease_token: UUID
    lease_expires_at: datetime
    sealed_secrets: list[tuple[bytes, str]]


@dataclass(frozen=True, slots=True)
class Completed:
    status: str
    attempt_no: int
    next_attempt_at: datetime | None
    endpoint_failing: bool
    endpoint_became_failing: bool


@dataclass(frozen=True, slots=True)
class FanOut:
    endpoints: int
    events: int
    deliveries: int


class WebhookStore:
    """Endpoints, deliveries and their attempts. `box` seals new secrets (the API's side)."""

    def __init__(self, db: Database, box: SecretBox | None = None) -> None:
        self.db = db
        self.box = box

    # -- a participant's endpoints (role: webhooks) -----------------------------------------

    async def create_endpoint(
        self, participant_id: str, url: str, event_types: list[str], description: str = ""
    ) -> CreatedEndpoint:
        box = self._box()
        endpoint_id = uuid.uuid4()
        secret = new_secret()
        row = await self.db.fetch_one(
            Role.WEBHOOKS, "create_webhook_endpoint",
            {"participant_id": participant_id, "endpoint_id": endpoint_id, "url": url,
             "event_types": event_types, "description": description,
             "secret_ciphertext": box.seal(secret, participant_id, endpoint_id),
             "key_id": box.key_id},
        )
        assert row is not None
        return CreatedEndpoint(
            endpoint_id=row["endpoint_id"], url=row["url"], event_types=list(row["event_types"]),
            description=row["description"], status=row["status"], created_at=row["created_at"],
            secret=secret_text(secret),
        )

    async def endpoints_of(self, participant_id: str) -> list[Endpoint]:
        rows = await self.db.fetch_all(
            Role.WEBHOOKS, "participant_webhook_endpoints", {"participant_id": participant_id}
        )
        return [Endpoint(**{**r, "event_types": list(r["event_types"])}) for r in rows]

    async def delete_endpoint(self, participant_id: str, endpoint_id: UUID) -> int:
        """Delete it; returns how many pending deliveries were abandoned."""
        row = await self.db.fetch_one(
            Role.WEBHOOKS, "delete_webhook_endpoint",
            {"participant_id": participant_id, "endpoint_id": endpoint_id},
        )
        assert row is not None
        return int(row["abandoned_deliveries"])

    async def rotate_secret(
        self, participant_id: str, endpoint_id: UUID,
        overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
    ) -> RotatedSecret:
        box = self._box()
        secret = new_secret()
        row = await self.db.fetch_one(
            Role.WEBHOOKS, "rotate_webhook_endpoint_secret",
            {"participant_id": participant_id, "endpoint_id": endpoint_id,
             "secret_ciphertext": box.seal(secret, participant_id, endpoint_id),
             "key_id": box.key_id, "overlap_seconds": overlap_seconds},
        )
        assert row is not None
        return RotatedSecret(endpoint_id=row["endpoint_id"], secret_no=row["secret_no"],
                             previous_expires_at=row["previous_expires"],
                             secret=secret_text(secret))

    # -- the operator's (role: webhooks from the API, control from the CLI) ---------------

    async def ops_endpoints(
        self, *, status: str | None = None, limit: int = 100, role: Role = Role.WEBHOOKS
    ) -> list[dict[str, Any]]:
        rows = await self.db.fetch_all(role, "ops_webhook_endpoints",
                                       {"status": status, "limit": limit})
        return [{**r, "event_types": list(r["event_types"])} for r in rows]

    async def set_enabled(
        self, endpoint_id: UUID, enabled: bool, reason: str, *, role: Role = Role.WEBHOOKS
    ) -> dict[str, Any]:
        row = await self.db.fetch_one(
            role, "set_webhook_endpoint_enabled",
            {"endpoint_id": endpoint_id, "enabled": enabled, "reason": reason},
        )
        assert row is not None
        return dict(row)

    async def deliveries(
        self, endpoint_id: UUID, *, limit: int = 50, role: Role = Role.WEBHOOKS
    ) -> list[dict[str, Any]]:
        return await self.db.fetch_all(role, "ops_webhook_deliveries",
                                       {"endpoint_id": endpoint_id, "limit": limit})

    async def replay(
        self, delivery_id: UUID, requested_by: str, reason: str = COMMAND_LINE_REPLAY_REASON,
        *, role: Role = Role.CONTROL,
    ) -> dict[str, Any]:
        """Send a delivery's event again as a new delivery (same webhook-id), recorded as an
        operator action of `requested_by` (role: control; the operator API replays through
        `OperatorStore.replay_webhook_delivery` with its token). `result` is REPLAYED (the
        new delivery), REPLAY_PENDING (a replay of it still waits: that one, nothing written)
        or ENDPOINT_DELETED (nothing written)."""
        row = await self.db.fetch_one(
            role, "replay_webhook_delivery_by_operator",
            {"delivery_id": delivery_id, "requested_by": requested_by, "reason": reason},
        )
        assert row is not None
        return dict(row)

    async def health(self, *, role: Role = Role.WEBHOOKS) -> dict[str, Any]:
        row = await self.db.fetch_one(role, "webhook_health")
        assert row is not None
        return dict(row)

    # -- the delivery service's (role: delivery) ---------------------------------------------

    async def fan_out(self, endpoint_limit: int, event_limit: int) -> FanOut:
        row = await self.db.fetch_one(
            Role.DELIVERY, "fan_out_webhook_events",
            {"endpoint_limit": endpoint_limit, "event_limit": event_limit},
        )
        assert row is not None
        return FanOut(int(row["endpoints"]), int(row["events"]), int(row["deliveries"]))

    async def claim(
        self, worker_id: str, limit: int, lease_seconds: int
    ) -> list[ClaimedDelivery]:
        rows = await self.db.fetch_all(
            Role.DELIVERY, "claim_webhook_deliveries",
            {"worker_id": worker_id, "limit": limit, "lease_seconds": lease_seconds},
        )
        return [
            ClaimedDelivery(
                participant_id=r["participant_id"], delivery_id=r["delivery_id"],
                endpoint_id=r["endpoint_id"], url=r["url"], event_seq=r["event_seq"],
                event_id=r["event_id"], event_type=r["event_type"], outbox_id=r["outbox_id"],
                event_created_at=r["event_created_at"],
                payload=r["payload"], attempt_no=r["attempt_no"], lease_token=r["lease_token"],
                lease_expires_at=r["lease_expires_at"],
                sealed_secrets=list(zip(r["secret_ciphertexts"] or [],
                                        r["secret_key_ids"] or [], strict=True)),
            )
            for r in rows
        ]

    async def complete(
        self,
        claimed: ClaimedDelivery,
        outcome: DeliveryOutcome,
        *,
        retry_after_seconds: float | None,
        http_status: int | None,
        latency_ms: int | None,
        error_class: str | None,
        response_excerpt: str | None,
        started_at: datetime | None,
        failing_after: int,
    ) -> Completed:
        row = await self.db.fetch_one(
            Role.DELIVERY, "complete_webhook_delivery",
            {"participant_id": claimed.participant_id, "delivery_id": claimed.delivery_id,
             "lease_token": claimed.lease_token, "outcome": outcome.value,
             "retry_after_seconds": retry_after_seconds, "http_status": http_status,
             "latency_ms": latency_ms, "error_class": error_class,
             "response_excerpt": response_excerpt, "started_at": started_at,
             "failing_after": failing_after},
        )
        assert row is not None
        return Completed(status=row["status"], attempt_no=row["attempt_no"],
                         next_attempt_at=row["next_attempt_at"],
                         endpoint_failing=row["endpoint_failing"],
                         endpoint_became_failing=row["endpoint_became_failing"])

    def _box(self) -> SecretBox:
        if self.box is None:
            raise RuntimeError("this WebhookStore was built without the webhook key")
        return self.box
