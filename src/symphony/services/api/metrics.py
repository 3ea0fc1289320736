"""`/metrics`: the outbox as the database sees it, plus this process's own worker, if any.

Two sources, never counted twice:

* `symphony_outbox_*` — read from the database at scrape time by `OutboxCollector`: one
  statement per scrape (the supervisor view and the ledger's rows by state), bounded by a
  server-side statement timeout, and cached for `cache_seconds` so that several scrapers (or
  one impatient one) cost one query. These numbers are the same whichever process serves
  them: every API process may export them.
* `symphony_worker_*` — the counters and the dispatch latency histogram of a worker that runs
  *in this process* (`symphony run`), passed in as its registry. A separate API process has
  no worker and exports none of them; it never invents worker numbers.

The endpoint needs no token: it shows counts and ages, never an item, a participant or an
amount.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from symphony.db import SymphonyError
from symphony.outbox import OutboxStore
from symphony.services.api.context import ApiContext, get_context

log = logging.getLogger("symphony.api.metrics")

_STATE_KEY: Final = "symphony_metrics_exporter"

# The ledger's states, so that a state nobody reached yet is exported as 0, not left out
# (a missing series reads as "unknown" in a dashboard, zero as zero).
LEDGER_STATES: Final = ("DISPATCHING", "DISPATCHED", "RETRYABLE", "FAILED", "ZOMBIE_REQUEUE")
# The four states of a pending item; they partition the queue (their sum is its depth).
QUEUE_STATES: Final = (
    ("due", "due"), ("scheduled", "scheduled"), ("dispatching", "dispatching"),
    ("zombie", "zombies"),
)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """cache_seconds: how long one database read serves scrapes (default 1 s).
    timeout_seconds: the read's statement timeout; past it the scrape reports
    `symphony_outbox_up 0` and no database values (default 2 s)."""

    cache_seconds: float = 1.0
    timeout_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.cache_seconds <= 60:
            raise ValueError("cache_seconds must be between 0 and 60")
        if not 0.1 <= self.timeout_seconds <= 30:
            raise ValueError("timeout_seconds must be between 0.1 and 30")


class OutboxCollector(Collector):
    """Database-derived metrics. `refresh()` reads (async, on the event loop's terms);
    `collect()`, which prometheus_client calls synchronously, only reports the last read."""

    def __init__(
        self,
        store: OutboxStore,
        config: MetricsConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.config = config or MetricsConfig()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._row: dict[str, Any] | None = None
        self._read_at: float | None = None
        self._duration = 0.0
        self.reads = 0  # database reads done, for tests and curiosity

    async def refresh(self) -> None:
        """Read the database unless the last read is younger than `cache_seconds`.

        Concurrent scrapes wait for the same read instead of starting their own. A failed
        read is cached too: a database that is down is not asked again on every scrape.
        """
        async with self._lock:
            now = self._clock()
            if self._read_at is not None and now - self._read_at < self.config.cache_seconds:
                return
            started = time.perf_counter()
            timeout_ms = int(self.config.timeout_seconds * 1000)
            try:
                # The server cancels the statement at timeout_ms; the client-side bound is a
                # backstop for a server that does not answer at all.
                self._row = await asyncio.wait_for(
                    self._store.metrics_snapshot(timeout_ms),
                    timeout=self.config.timeout_seconds + 1.0,
                )
            except (SymphonyError, TimeoutError) as exc:
                self._row = None
                log.warning("metrics: the database read failed: %s", _describe(exc))
            self.reads += 1
            self._duration = time.perf_counter() - started
            self._read_at = self._clock()

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: registering must not trigger a database read.
        return []

    def collect(self) -> Iterable[Metric]:
        row = self._row
        up = GaugeMetricFamily(
            "symphony_outbox_up",
            "1 if the last metrics read of the database succeeded, else 0 (then no other "
            "symphony_outbox_* value is reported)",
        )
        up.add_metric([], 1.0 if row is not None else 0.0)
        yield up
        duration = GaugeMetricFamily(
            "symphony_outbox_scrape_duration_seconds",
            "How long the last metrics read of the database took",
        )
        duration.add_metric([], self._duration)
        yield duration
        if row is None:
            return

        queue = GaugeMetricFamily(
            "symphony_outbox_queue_items",
            "Items in the pending queue by state: due (claimable now), scheduled (waiting for "
            "a retry backoff), dispatching (leased), zombie (lease expired, awaiting repair)",
            labels=["state"],
        )
        for label, column in QUEUE_STATES:
            queue.add_metric([label], float(row[column]))
        yield queue

        lookup = GaugeMetricFamily(
            "symphony_outbox_awaiting_lookup_items",
            "Pending items whose last attempt may have executed: the rail is asked before any "
            "re-send",
        )
        lookup.add_metric([], float(row["awaiting_lookup"]))
        yield lookup

        review = GaugeMetricFamily(
            "symphony_outbox_under_review_items",
            "Pending items that may have executed and that the rail did not settle within the "
            "retry ceiling: they wait for an operator's decision (alert on any)",
        )
        review.add_metric([], float(row["under_review"]))
        yield review

        oldest = GaugeMetricFamily(
            "symphony_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending item (0 when the queue is empty), by the database clock",
        )
        oldest.add_metric([], _age_seconds(row))
        yield oldest

        ledger = row["ledger_rows_by_state"] or {}
        attempts = CounterMetricFamily(
            "symphony_outbox_ledger_rows",
            "Rows of the append-only attempt ledger by state (DISPATCHED and FAILED are the "
            "items that ended; DISPATCHING counts attempts started)",
            labels=["state"],
        )
        for state in LEDGER_STATES:
            attempts.add_metric([state], float(ledger.get(state, 0)))
        yield attempts

        workers = GaugeMetricFamily(
            "symphony_fleet_workers",
            "Workers by heartbeat: live (a heartbeat within its own staleness bound) or stale "
            "(silent past it, for up to a day)",
            labels=["state"],
        )
        workers.add_metric(["live"], float(row["fleet_live_workers"]))
        workers.add_metric(["stale"], float(row["fleet_stale_workers"]))
        yield workers
        uncovered = GaugeMetricFamily(
            "symphony_fleet_uncovered_buckets",
            "Routing buckets (of 256) that no live worker covers: their items are claimed by "
            "nobody (alert on any)",
        )
        uncovered.add_metric([], float(row["fleet_uncovered_buckets"]))
        yield uncovered


def _age_seconds(row: dict[str, Any]) -> float:
    oldest = row["oldest_pending_at"]
    if oldest is None:
        return 0.0
    return max(0.0, float((row["observed_at"] - oldest).total_seconds()))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SymphonyError):
        return f"{exc.code} (incident {exc.incident_id})"
    return "no answer within the timeout"


class MetricsExporter:
    """What `/metrics` serves: the outbox collector's registry and any in-process registries
    (the worker's, in `symphony run`), each exposed exactly once."""

    def __init__(
        self,
        collector: OutboxCollector,
        process_registries: Sequence[CollectorRegistry] = (),
    ) -> None:
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        # By identity: the same registry passed twice would export every series twice.
        unique: dict[int, CollectorRegistry] = {}
        for registry in process_registries:
            unique.setdefault(id(registry), registry)
        self.process_registries = tuple(unique.values())

    async def render(self) -> bytes:
        await self.collector.refresh()
        parts = [generate_latest(self.registry)]
        parts.extend(generate_latest(registry) for registry in self.process_registries)
        return b"".join(parts)


def metrics_router(
    *,
    process_registries: Sequence[CollectorRegistry] = (),
    config: MetricsConfig | None = None,
) -> APIRouter:
    """`GET /metrics` in the Prometheus text format. No authentication (see the module doc).

    `process_registries` are this process's own (the worker's registry in `symphony run`);
    each app gets its own exporter, built on first scrape from the app's store.
    """
    router = APIRouter(tags=["observability"])

    @router.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics (no token needed; no item data)",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics(
        request: Request, context: Annotated[ApiContext, Depends(get_context)]
    ) -> Response:
        exporter = getattr(request.app.state, _STATE_KEY, None)
        if not isinstance(exporter, MetricsExporter):
            exporter = MetricsExporter(
                OutboxCollector(context.store, config), process_registries
            )
            setattr(request.app.state, _STATE_KEY, exporter)
        body = await exporter.render()
        return Response(
            content=body,
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )

    return router
