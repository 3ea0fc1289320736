"""`symphony_outbox_*` metrics: read from the database at scrape time, once per cache period,
reported as nothing but `symphony_outbox_up 0` when the database cannot be read, and never
mixed up with (or duplicating) a worker's own `symphony_worker_*` registry."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.outbox import instruction

from symphony.db import Database, DatabaseSettings, Endpoint, Principal
from symphony.outbox import OutboxStore
from symphony.services.api.metrics import (
    LEDGER_STATES,
    MetricsConfig,
    MetricsExporter,
    OutboxCollector,
)
from symphony.services.worker import WorkerMetrics


class FakeClock:
    """Monotonic time the test moves by hand (the cache period passes without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
async def unreachable_db(tmp_path: object) -> AsyncIterator[Database]:
    """A Database whose server is not there: a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = DatabaseSettings(SYMPHONY_DB_CONNECT_TIMEOUT_S=1)
    endpoint = Endpoint(
        admin_dsn=f"host=127.0.0.1 port={port} dbname=none user=none",
        server_key="unreachable", embedded=False,
    )
    db = Database(settings, endpoint, {p: "unused" for p in Principal})
    try:
        yield db
    finally:
        await db.close()


async def test_the_scrape_reports_the_database_state(isolated_db: Database) -> None:
    store = OutboxStore(isolated_db)
    await store.enqueue(instruction())
    exporter = MetricsExporter(OutboxCollector(store))

    values = samples((await exporter.render()).decode())
    status = await store.status()

    assert values[("symphony_outbox_up", ())] == 1.0
    for label, expected in [("due", status.due), ("scheduled", status.scheduled),
                            ("dispatching", status.dispatching), ("zombie", status.zombies)]:
        assert values[("symphony_outbox_queue_items", (("state", label),))] == expected
    assert values[("symphony_outbox_awaiting_lookup_items", ())] == status.awaiting_lookup
    assert values[("symphony_outbox_under_review_items", ())] == status.under_review
    assert values[("symphony_outbox_oldest_pending_age_seconds", ())] >= 0.0
    for state in LEDGER_STATES:
        assert ("symphony_outbox_ledger_rows_total", (("state", state),)) in values
    assert not any(name.startswith("symphony_worker_") for name, _ in values)


async def test_scrapes_within_the_cache_period_share_one_read(isolated_db: Database) -> None:
    clock = FakeClock()
    collector = OutboxCollector(OutboxStore(isolated_db), MetricsConfig(cache_seconds=1.0),
                                clock=clock)
    await asyncio.gather(*(collector.refresh() for _ in range(5)))
    await collector.refresh()
    assert collector.reads == 1
    clock.now += 1.5
    await collector.refresh()
    assert collector.reads == 2


async def test_an_unreachable_database_reports_down_and_no_numbers(
    unreachable_db: Database,
) -> None:
    clock = FakeClock()
    collector = OutboxCollector(OutboxStore(unreachable_db), clock=clock)
    exporter = MetricsExporter(collector)

    values = samples((await exporter.render()).decode())

    assert values[("symphony_outbox_up", ())] == 0.0
    assert not any(name.startswith("symphony_outbox_queue") for name, _ in values)
    assert not any(name.startswith("symphony_outbox_ledger") for name, _ in values)
    # The failure is cached too: a database that is down is not asked on every scrape.
    await exporter.render()
    assert collector.reads == 1


async def test_a_worker_registry_is_exported_once_beside_the_outbox(
    isolated_db: Database,
) -> None:
    worker = WorkerMetrics()
    worker.dispatched.inc(3)
    worker.dispatch_seconds.observe(0.02)
    exporter = MetricsExporter(OutboxCollector(OutboxStore(isolated_db)),
                               [worker.registry, worker.registry])

    text = (await exporter.render()).decode()
    values = samples(text)

    assert values[("symphony_worker_items_dispatched_total", ())] == 3.0
    assert values[("symphony_worker_dispatch_seconds_count", ())] == 1.0
    assert text.count("# TYPE symphony_worker_dispatch_seconds histogram") == 1
    assert text.count("# TYPE symphony_outbox_up gauge") == 1


@pytest.mark.parametrize("kwargs", [{"cache_seconds": -1}, {"timeout_seconds": 0}])
def test_metrics_config_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MetricsConfig(**kwargs)


async def test_the_scrape_reports_the_fleet_and_its_uncovered_buckets(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    from tests.support.ops import database_now

    from symphony.db import test_only
    from symphony.outbox.model import BucketRange
    from symphony.outbox.operators import Heartbeat, OperatorStore

    await test_only.query_no_role(isolated_admin_dsn,
                                  "DELETE FROM symphony_ops.worker_heartbeats")
    now = await database_now(isolated_admin_dsn)
    ops = OperatorStore(isolated_db)
    await ops.heartbeat(Heartbeat("m-live", BucketRange(0, 199), "1", now, now, 0))
    await ops.heartbeat(Heartbeat("m-stale", BucketRange(200, 255), "1", now, now, 0))
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony_ops.worker_heartbeats SET heartbeat_at = now() - interval '1 hour' "
        " WHERE worker_id = 'm-stale'")
    values = samples((await MetricsExporter(OutboxCollector(OutboxStore(isolated_db)))
                      .render()).decode())
    assert values[("symphony_fleet_workers", (("state", "live"),))] == 1.0
    assert values[("symphony_fleet_workers", (("state", "stale"),))] == 1.0
    assert values[("symphony_fleet_uncovered_buckets", ())] == 56.0
