"""`symphony run --demo` in-process on a database of its own: the sample payments settle, and
a stop puts everything down again, the demo's retry policy included."""

from __future__ import annotations

import asyncio
import io

import pytest
from tests.support.database import DatabaseFactory

from symphony.db import Database, DatabaseSettings, Role
from symphony.outbox import OutboxStore
from symphony.services.system import RunOptions, SystemRunner, demo_destination


@pytest.fixture
def own_settings(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> DatabaseSettings:
    for name in ("SYMPHONY_RAIL_URL", "ZOMBIE_THRESHOLD_SECONDS", "SYMPHONY_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    return make_database()


def test_the_demo_mix_covers_every_path() -> None:
    kinds = {demo_destination(i).split(":")[0] for i in range(10)}
    assert {"RETRY", "FAIL", "HANG"} <= kinds


async def test_run_demo_settles_every_payment_then_stops_cleanly(
    own_settings: DatabaseSettings,
) -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    # Nine payments: one retried twice by the rail, one declined, the rest executed at once.
    runner = SystemRunner(own_settings, RunOptions(demo=True, demo_count=9), out=out, stop=stop)
    running = asyncio.create_task(runner.run())
    async with asyncio.timeout(30):
        while "Demo complete" not in out.getvalue():
            assert not running.done(), out.getvalue()
            await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(running, 30)

    text = out.getvalue()
    assert "rail       simulator at http://127.0.0.1:" in text
    assert "demo 9/9 settled" in text
    assert "Demo: submitting 9 payments through http://127.0.0.1:" in text, "through the API"
    assert text.rstrip().endswith("Stopped.")
    async with await Database.open(own_settings) as db:
        status = await OutboxStore(db).status()
        policy = await db.fetch_one(Role.CONTROL, "retry_policy")
    assert (status.dispatched_total, status.failed_total, status.pending_total) == (8, 1, 0)
    assert policy is not None and policy["backoff_base_ms"] == 1000, "demo policy restored"
