"""The delivery loop: fan events out to deliveries, claim due ones, call, record each attempt.

One cycle (`run_once`):

1. fan out: one statement turns events past each endpoint's cursor into deliveries (bounded);
2. claim: up to `batch_size` due deliveries are leased (an expired lease's lost attempt is
   recorded first, then the delivery is sent again with the same webhook-id);
3. call: each delivery is signed (every live secret of its endpoint) and sent, at most
   `max_concurrency` at once, each bounded by the sender's deadlines;
4. record: each attempt as its call ends, fenced by its lease token; a failure is scheduled
   again by the retry schedule, or FAILED once the schedule ran out.

The completion waits out a short database outage (retrying until shortly before the lease
ends): an attempt made is recorded if at all possible, and otherwise the lease expires and the
delivery is sent again — at least once, with duplicates only after such a failure.
Payments never wait for any of this: nothing here runs in a payment's transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from symphony.db import (
    DatabaseUnavailableError,
    LeaseFencedError,
    QueryTimeoutError,
    Role,
)
from symphony.outbox.events import PaymentEvent, public_event_id
from symphony.service import LoopService
from symphony.services.api.events import event_body as event_document
from symphony.services.delivery.config import LEASE_MARGIN_SECONDS, DeliveryConfig
from symphony.services.delivery.metric import DeliveryMetrics
from symphony.webhooks import (
    ClaimedDelivery,
    DeliveryOutcome,
    SecretBox,
    SecretUnavailableError,
    SendResult,
    WebhookSender,
    WebhookStore,
)
from symphony.webhooks.signing import webhook_headers

log = logging.getLogger("symphony.delivery")

_COMPLETION_RETRY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class DeliveryCycle:
    """What one cycle did."""

    deliveries_created: int
    claimed: int
    delivered: int
    retried: int
    failed: int
    fenced: int
    unrecorded: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def event_body(delivery: ClaimedDelivery) -> bytes:
    """The JSON body of a call: the event exactly as `GET /v1/events` lists it (`id`
    `evt_...`, `type`, `sequence`, `created_at`, `data.object` = the payment then)."""
    event = PaymentEvent(event_seq=delivery.event_seq, event_id=delivery.event_id,
                         event_type=delivery.event_type, outbox_id=delivery.outbox_id,
                         payload=delivery.payload, created_at=delivery.event_created_at)
    return json.dumps(event_document(event), separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


class DeliveryService(LoopService[DeliveryCycle]):
    name = "delivery"

    def __init__(
        self,
        store: WebhookStore,
        box: SecretBox,
        sender: WebhookSender,
        config: DeliveryConfig,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        super().__init__(config.poll_interval_seconds)
        self.store = store
        self.box = box
        self.sender = sender
        self.config = config
        self.schedule = config.schedule
        self.metrics = metrics or DeliveryMetrics()
        self._health_read_at: float | None = None

    async def run_once(self) -> DeliveryCycle:
        cfg = self.config
        fan = await self.store.fan_out(cfg.fan_out_endpoint_limit, cfg.fan_out_event_limit)
        self.metrics.fanned_out.inc(fan.deliveries)
        claimed = await self.store.claim(cfg.worker_id, cfg.batch_size, cfg.lease_seconds)
        claimed_at = time.monotonic()
        outcomes: list[str] = []
        if claimed:
            gate = asyncio.Semaphore(cfg.max_concurrency)

            async def one(delivery: ClaimedDelivery) -> None:
                async with gate:
                    outcomes.append(await self._deliver(delivery, claimed_at))

            async with asyncio.TaskGroup() as group:
                for delivery in claimed:
                    group.create_task(one(delivery))
        await self._read_health()
        if len(claimed) >= cfg.batch_size or fan.endpoints >= cfg.fan_out_endpoint_limit:
            self.wake()  # more may be waiting: go again without the interval
        return DeliveryCycle(
            deliveries_created=fan.deliveries, claimed=len(claimed),
            delivered=outcomes.count("DELIVERED"), retried=outcomes.count("RETRY"),
            failed=outcomes.count("FAILED"), fenced=outcomes.count("FENCED"),
            unrecorded=outcomes.count("UNRECORDED"),
        )

    async def _read_health(self) -> None:
        """Refresh the gauges, at most every `health_interval_seconds` (a full batch wakes
        the loop at once, and the read counts every delivery)."""
        now = time.monotonic()
        if (self._health_read_at is not None
                and now - self._health_read_at < self.config.health_interval_seconds):
            return
        self._health_read_at = now
        try:
            self.metrics.observe_health(await self.store.health(role=Role.DELIVERY))
        except (DatabaseUnavailableError, QueryTimeoutError):
            log.warning("delivery: the health read failed; the gauges keep their last values")

    async def _deliver(self, delivery: ClaimedDelivery, claimed_at: float) -> str:
        started_at = datetime.now(UTC)
        result = await self._call(delivery)
        self.metrics.call_seconds.observe(result.latency_ms / 1000.0)
        if result.ok:
            outcome, delay = DeliveryOutcome.DELIVERED, None
        else:
            delay = self.schedule.delay_after(delivery.attempt_no)
            outcome = DeliveryOutcome.RETRY if delay is not None else DeliveryOutcome.FAILED
        deadline = claimed_at + self.config.lease_seconds - LEASE_MARGIN_SECONDS
        while True:
            try:
                done = await self.store.complete(
                    delivery, outcome, retry_after_seconds=delay,
                    http_status=result.http_status, latency_ms=result.latency_ms,
                    error_class=result.error_class, response_excerpt=result.excerpt,
                    started_at=started_at, failing_after=self.config.failing_after_failures,
                )
                break
            except LeaseFencedError:
                self.metrics.fenced.inc()
                log.warning("delivery %s: the lease was lost before the attempt was recorded",
                            delivery.delivery_id)
                return "FENCED"
            except (DatabaseUnavailableError, QueryTimeoutError):
                if time.monotonic() + _COMPLETION_RETRY_SECONDS >= deadline:
                    log.warning("delivery %s: attempt %d not recorded (database unavailable); "
                                "it is sent again once its lease expires",
                                delivery.delivery_id, delivery.attempt_no)
                    return "UNRECORDED"
                await asyncio.sleep(_COMPLETION_RETRY_SECONDS)
        self.metrics.attempts.labels(outcome.value).inc()
        if done.endpoint_became_failing:
            log.warning("webhook endpoint %s of %s is failing (last error %s); operators: "
                        "symphony webhooks list --failing", delivery.endpoint_id,
                        delivery.participant_id, result.error_class)
        return outcome.value

    async def _call(self, delivery: ClaimedDelivery) -> SendResult:
        try:
            keys = [self.box.open(sealed, key_id, delivery.participant_id, delivery.endpoint_id)
                    for sealed, key_id in delivery.sealed_secrets]
        except SecretUnavailableError as exc:
            log.error("delivery %s: %s", delivery.delivery_id, exc.message)
            return SendResult(False, None, 0, "secret_unavailable", None)
        if not keys:
            return SendResult(False, None, 0, "no_live_secret", None)
        body = event_body(delivery)
        # webhook-id: the event's public id, the same on every attempt and every replay.
        headers = webhook_headers(keys, public_event_id(delivery.event_id), int(time.time()),
                                  body)
        return await self.sender.send(delivery.url, headers, body)
