"""Prometheus metrics of one worker process.

Each `WorkerMetrics` has its own registry, so several workers in one process (tests, `symphony
run`) never collide on metric names, and the endpoint shows exactly one worker's numbers.
Every name starts with `symphony_worker_`: these are what this process did. What the database
holds (queue depth, ledger rows) is `symphony_outbox_*`, read at scrape time by the API's
`/metrics` (symphony.services.api.metrics), so no number is counted twice.
"""

from __future__ import annotations

import logging
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("symphony.metrics")

METRICS_HOST: Final = "127.0.0.1"
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """Counters of what the worker did, and the latency of rail dispatches."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claimed = Counter(
            "symphony_worker_items_claimed", "Items leased by claim", registry=r
        )
        self.dispatched = Counter(
            "symphony_worker_items_dispatched", "Items recorded as DISPATCHED", registry=r
        )
        self.retried = Counter(
            "symphony_worker_items_retried",
            "Items rescheduled after a RETRYABLE attempt",
            registry=r,
        )
        self.failed = Counter(
            "symphony_worker_items_failed", "Items recorded as FAILED", registry=r
        )
        self.fenced = Counter(
            "symphony_worker_completions_fenced",
            "Completions refused because the lease was no longer held",
            registry=r,
        )
        self.lookups = Counter(
            "symphony_worker_rail_lookups", "Rail lookups before a re-dispatch", registry=r
        )
        self.skipped_sends = Counter(
            "symphony_worker_sends_skipped",
            "Re-dispatches avoided because a lookup showed the rail had executed the item",
            registry=r,
        )
        self.zombies_repaired = Counter(
            "symphony_worker_zombies_repaired", "Expired leases returned to PENDING", registry=r
        )
        self.cycle_failures = Counter(
            "symphony_worker_cycle_failures", "Worker cycles that raised", registry=r
        )
        self.in_flight = Gauge(
            "symphony_worker_dispatches_in_flight", "Rail calls currently in flight", registry=r
        )
        self.dispatch_seconds = Histogram(
            "symphony_worker_dispatch_seconds",
            "Duration of one rail dispatch call",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._server_port: int | None = None

    def serve(self, port: int) -> int:
        """Serve `/metrics` on 127.0.0.1:`port` (0 picks a free port); returns the port.

        The server runs on a daemon thread and ends with the process.
        """
        if self._server_port is not None:
            return self._server_port
        server, _thread = start_http_server(port, addr=METRICS_HOST, registry=self.registry)
        self._server_port = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", METRICS_HOST, self._server_port)
        return self._server_port
