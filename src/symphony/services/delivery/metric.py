"""Prometheus metrics of one delivery service (its own registry, like the worker's).

`symphony_webhook_endpoints_failing` is read from the database after every cycle (all
endpoints, whichever service delivers them): alert on it. The rest count what this process did.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("symphony.metrics")

METRICS_HOST: Final = "127.0.0.1"
_LATENCY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DeliveryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attempts = Counter(
            "symphony_webhook_delivery_attempts",
            "Delivery attempts made by this process, by outcome (DELIVERED, RETRY, FAILED)",
            ["outcome"], registry=r)
        self.fenced = Counter(
            "symphony_webhook_completions_fenced",
            "Attempts whose recording was refused because the lease was no longer held",
            registry=r)
        self.fanned_out = Counter(
            "symphony_webhook_deliveries_created", "Deliveries created by the fan-out",
            registry=r)
        self.call_seconds = Histogram(
            "symphony_webhook_call_seconds", "Duration of one webhook call",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.endpoints_failing = Gauge(
            "symphony_webhook_endpoints_failing",
            "Enabled webhook endpoints marked failing after persistent errors (alert on any)",
            registry=r)
        self.deliveries_pending = Gauge(
            "symphony_webhook_deliveries_pending", "Deliveries not yet delivered or given up",
            registry=r)
        self.deliveries_failed = Gauge(
            "symphony_webhook_deliveries_failed",
            "Deliveries whose retry schedule ran out (an operator may replay them)",
            registry=r)
        self.endpoints_held = Gauge(
            "symphony_webhook_endpoints_held",
            "Enabled endpoints whose last attempt failed: sent one probe at a time, their new "
            "events wait behind their cursor until a delivery succeeds",
            registry=r)
        self.events_waiting = Gauge(
            "symphony_webhook_events_waiting",
            "Events past the cursors of enabled endpoints, not yet made deliveries (the "
            "backlog of held endpoints, all event types)",
            registry=r)
        self._server_port: int | None = None

    def observe_health(self, health: dict[str, Any]) -> None:
        self.endpoints_failing.set(float(health["endpoints_failing"]))
        self.deliveries_pending.set(float(health["deliveries_pending"]))
        self.deliveries_failed.set(float(health["deliveries_failed"]))
        self.endpoints_held.set(float(health["endpoints_held"]))
        self.events_waiting.set(float(health["events_waiting"]))

    def serve(self, port: int) -> int:
        if self._server_port is not None:
            return self._server_port
        server, _thread = start_http_server(port, addr=METRICS_HOST, registry=self.registry)
        self._server_port = int(server.server_address[1])
        log.info("delivery metrics on http://%s:%d/metrics", METRICS_HOST, self._server_port)
        return self._server_port
