"""A whole delivery process: the delivery loop, its HTTP sender and its metrics endpoint.

`DeliveryProcess` is what `symphony delivery` runs and what `symphony run` embeds. It owns the
sender it creates (and closes it), never the database handle it is given.
"""

from __future__ import annotations

import asyncio
import logging

from symphony.db import Database
from symphony.services.delivery.config import DeliveryConfig
from symphony.services.delivery.metric import DeliveryMetrics
from symphony.services.delivery.service import DeliveryCycle, DeliveryService
from symphony.services.worker import stop_on_signals
from symphony.webhooks import SecretBox, UrlPolicy, WebhookSender, WebhookStore

log = logging.getLogger("symphony.delivery")


class DeliveryProcess:
    def __init__(
        self, db: Database, config: DeliveryConfig, box: SecretBox, policy: UrlPolicy
    ) -> None:
        self.config = config
        self.metrics = DeliveryMetrics()
        self.sender = WebhookSender(policy, config.limits, ca_bundle=config.ca_bundle)
        self.service = DeliveryService(WebhookStore(db), box, self.sender, config, self.metrics)
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.config.metrics_port is not None:
            self.metrics.serve(self.config.metrics_port)
        await self.service.start()
        log.info("delivery %s started: batch %d, concurrency %d, lease %ds",
                 self.config.worker_id, self.config.batch_size, self.config.max_concurrency,
                 self.config.lease_seconds)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            await self.service.stop(timeout=self.config.total_timeout_seconds + 1.0)
        finally:
            await self.sender.aclose()
        log.info("delivery %s stopped after %d cycle(s)", self.config.worker_id,
                 self.service.cycles)

    async def run_once(self) -> DeliveryCycle:
        return await self.service.run_once()

    async def aclose(self) -> None:
        await self.sender.aclose()

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await self.start()
            try:
                await stop.wait()
            finally:
                await self.stop()
