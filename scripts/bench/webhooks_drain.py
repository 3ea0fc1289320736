"""Do deliveries slow payments? The drain rate with every webhook endpoint down, beside the
drain rate with no webhooks, in the same run on the same embedded server.

Each round enqueues the same number of payments (for fresh participants), then drains them
with the real executor worker on an in-process no-op rail and measures payments dispatched
per second. The rounds alternate:

* `none`: the participants have no webhook endpoints and no delivery service runs;
* `down`: each participant has two endpoints on a loopback port nothing listens on, and the
  real delivery service runs beside the worker the whole time (its own process, its
  defaults); the round's clock starts once the service has tried every endpoint and failed
  once (they are down and it knows: the steady cost of endpoints that stay down, not the
  one-off cost of finding out).

The figure is the ratio of the medians (down / none): 1.0 means payments drain as fast with
every endpoint down as with no webhooks. Each round also records what happened while its
payments drained: deliveries made, attempts recorded, CPU seconds of this process (the
worker), of the delivery process and of the PostgreSQL server. Usage (from the repository
root):

    nice .venv/bin/python scripts/bench/webhooks_drain.py [--payments 2000] [--rounds 3]

Prints a table and writes build/bench-webhooks.json.

Latest runs (2,000 payments, 5 rounds per mode, nice, a 2-core machine). Quiet (load
0.0-0.7): no webhooks 2,833/s, every endpoint down 2,657/s, ratio of the medians 0.94; per
alternating pair 1.00, 1.00, 0.94, 1.04, 0.95 (the machine slowed during the run). Shared
with other work (load 6-7): 820/s vs 800/s, ratio 0.98. While draining, the delivery service
made no delivery and 0-12 attempts (<= 0.01 s of its CPU) and the server's CPU matched the
no-webhook rounds: a held endpoint gets one probe at a time and its new events wait behind
its cursor (migration webhook_probe). Before that, the same bench: 0.85 quiet, 0.65 at load
6-7 (~3,800 deliveries made and 300-400 failed attempts per drain). No payment statement
waits on a webhook table: see
tests/unit/test_webhook_delivery.py::test_payments_never_wait_for_the_webhook_tables.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("SYMPHONY_LOG_LEVEL", "WARNING")
from child import NoopRail

from symphony.db import Database, DatabaseSettings, EmbeddedServer, Principal, bootstrap
from symphony.outbox import OutboxStore, PaymentInstruction
from symphony.outbox.access import AccessStore
from symphony.services.worker import ExecutorWorker, WorkerConfig
from symphony.webhooks import WebhookStore, load_secret_box

PAYLOAD = {"amount": "12.50", "currency": "EUR", "destination": "DE89370400440532013000"}
PARTICIPANTS_PER_ROUND = 8
ENDPOINTS_PER_PARTICIPANT = 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until_drained(admin_dsn: str) -> None:
    """Asked as the admin on one connection, cheaply (benchmark tooling, not the product)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        while True:
            await asyncio.sleep(0.02)
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM symphony.payment_outbox_pending)")
            row = await cur.fetchone()
            if row is not None and not row[0]:
                return


async def _until_every_endpoint_failed(admin_dsn: str, participants: list[str]) -> None:
    """Until the delivery service has tried every endpoint of the round and failed at least
    once on each: the endpoints are down and the service has found out. What it does from
    then on is the steady cost of endpoints that stay down, which the figure measures; finding
    out is a one-off per outage, not a cost per payment."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        for _ in range(600):
            await asyncio.sleep(0.05)
            cur = await conn.execute(
                "SELECT count(DISTINCT endpoint_id) = %s FROM "
                "symphony.webhook_delivery_attempts WHERE participant_id = ANY(%s)",
                (len(participants) * ENDPOINTS_PER_PARTICIPANT, participants))
            row = await cur.fetchone()
            if row is not None and row[0]:
                return
    raise RuntimeError("the delivery service did not try every endpoint within 30 s")


async def _failed_attempts(admin_dsn: str, participants: list[str]) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM symphony.webhook_delivery_attempts "
                                 "WHERE participant_id = ANY(%s)", (participants,))
        row = await cur.fetchone()
        return int(row[0]) if row else 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + system) of a live process, plus its reaped children's if asked."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def _server_cpu(data_dir: Path) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster, its live backends and the ones
    that ended (reaped into the postmaster's counts). Linux only; 0.0 elsewhere."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = _proc_cpu(postmaster, reaped=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:  # a backend may end meanwhile
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(stat[1]) == postmaster:
                total += _proc_cpu(int(entry.name))
    return total


async def _webhook_rows(admin_dsn: str, participants: list[str]) -> tuple[int, int]:
    """(deliveries, attempts) of these participants so far."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM symphony.webhook_deliveries "
            "         WHERE participant_id = ANY(%s)), "
            "       (SELECT count(*) FROM symphony.webhook_delivery_attempts "
            "         WHERE participant_id = ANY(%s))", (participants, participants))
        row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


async def one_round(db: Database, admin_dsn: str, mode: str, payments: int, tag: str,
                    down_url: str, data_dir: Path) -> dict[str, Any]:
    access = AccessStore(db)
    store = OutboxStore(db)
    hooks = WebhookStore(db, load_secret_box(db.settings.home))
    participants = [f"wb-{tag}-{p}" for p in range(PARTICIPANTS_PER_ROUND)]
    for p in participants:
        await access.add_participant(p, "webhook benchmark")
        if mode == "down":
            for _ in range(ENDPOINTS_PER_PARTICIPANT):
                await hooks.create_endpoint(p, down_url, ["payment.created", "payment.dispatched",
                                                          "payment.failed"])
    instructions = [PaymentInstruction(f"i-{tag}-{n}", f"k-{n}", participants[n % len(participants)],
                                       "RTP", PAYLOAD) for n in range(payments)]
    await store.enqueue_batch(instructions)
    worker = ExecutorWorker(store, NoopRail(), WorkerConfig.load(
        worker_id=f"bench-{tag}", batch_size=64, max_concurrency=32, poll_interval_seconds=0.05))
    delivery = None
    if mode == "down":
        # `symphony delivery` as deployed: its own process, its defaults (batch 32,
        # concurrency 16, 1 s poll, woken at once while full batches keep coming).
        # Its own principal's DSN and the webhook key, nothing else (as in production).
        key = base64.b64encode(load_secret_box(db.settings.home).key).decode()
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update({"SYMPHONY_DELIVERY_DATABASE_URL": db.login_dsn(Principal.DELIVERY),
                    "SYMPHONY_WEBHOOK_KEY": key, "SYMPHONY_HOME": str(db.settings.home),
                    "SYMPHONY_ENV": "development", "SYMPHONY_WEBHOOK_ALLOW_LOOPBACK": "true",
                    "SYMPHONY_LOG_LEVEL": "ERROR"})
        delivery = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "symphony", "delivery", "--worker-id", f"bench-{tag}",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await _until_every_endpoint_failed(admin_dsn, participants)
    rows_before = await _webhook_rows(admin_dsn, participants)
    delivery_cpu = _proc_cpu(delivery.pid) if delivery is not None else 0.0
    server_cpu = _server_cpu(data_dir)
    own_cpu = time.process_time()
    started = time.perf_counter()
    await worker.start()
    await _until_drained(admin_dsn)
    seconds = time.perf_counter() - started
    # What each process spent while the payments drained (the figure's window).
    own_cpu = time.process_time() - own_cpu
    server_cpu = _server_cpu(data_dir) - server_cpu
    delivery_cpu = (_proc_cpu(delivery.pid) - delivery_cpu) if delivery is not None else 0.0
    rows_after = await _webhook_rows(admin_dsn, participants)
    await worker.stop()
    attempts = 0
    if delivery is not None:
        alive = delivery.returncode is None
        delivery.terminate()
        await delivery.wait()
        assert alive, "the delivery service died during the round"
        attempts = await _failed_attempts(admin_dsn, participants)
        # Park the endpoints so later rounds measure their own.
        for row in await hooks.ops_endpoints(limit=1000):
            if row["participant_id"] in participants:
                await hooks.set_enabled(row["endpoint_id"], False, "benchmark round over")
    return {"mode": mode, "payments": payments, "seconds": round(seconds, 3),
            "rate": round(payments / seconds, 1), "failed_delivery_attempts": attempts,
            "during_drain": {
                "deliveries_created": rows_after[0] - rows_before[0],
                "attempts_recorded": rows_after[1] - rows_before[1],
                "cpu_seconds_worker_process": round(own_cpu, 3),
                "cpu_seconds_delivery_process": round(delivery_cpu, 3),
                "cpu_seconds_postgres": round(server_cpu, 3)}}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    home = Path(tempfile.mkdtemp(prefix="symphony-bench-webhooks-"))
    server = EmbeddedServer(home / "pgdata")
    admin_dsn = await asyncio.to_thread(server.start)
    try:
        settings = DatabaseSettings(SYMPHONY_HOME=str(home), SYMPHONY_DB_POOL_MAX_SIZE=24)
        await bootstrap(settings, embedded=server)
        db = await Database.open(settings, embedded=server)
        down_url = f"http://127.0.0.1:{_closed_port()}/hooks"
        run = uuid.uuid4().hex[:6]
        rounds: list[dict[str, Any]] = []
        try:
            # Warm-up (plans, pools), not counted.
            await one_round(db, admin_dsn, "none", min(200, args.payments), f"{run}-warm",
                            down_url, home / "pgdata")
            for r in range(args.rounds):
                for mode in (("none", "down") if r % 2 == 0 else ("down", "none")):
                    result = await one_round(db, admin_dsn, mode, args.payments,
                                             f"{run}-{r}-{mode}", down_url, home / "pgdata")
                    during = result["during_drain"]
                    print(f"  round {r + 1} {mode:>4}: {result['rate']:8.1f} payments/s "
                          f"({result['seconds']:.2f} s; {result['failed_delivery_attempts']} "
                          f"failed delivery attempts in all; while draining: "
                          f"{during['deliveries_created']} deliveries made, "
                          f"{during['attempts_recorded']} attempts, CPU s worker "
                          f"{during['cpu_seconds_worker_process']} / delivery "
                          f"{during['cpu_seconds_delivery_process']} / postgres "
                          f"{during['cpu_seconds_postgres']})", flush=True)
                    rounds.append(result)
        finally:
            await db.close()
    finally:
        await asyncio.to_thread(server.shutdown)
        shutil.rmtree(home, ignore_errors=True)
    none = statistics.median(r["rate"] for r in rounds if r["mode"] == "none")
    down = statistics.median(r["rate"] for r in rounds if r["mode"] == "down")
    return {
        "what": "payments drained per second with every webhook endpoint down vs no webhooks",
        "payments_per_round": args.payments, "rounds_per_mode": args.rounds,
        "median_rate_no_webhooks": none, "median_rate_endpoints_down": down,
        "ratio_down_over_none": round(down / none, 3),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    result = asyncio.run(main(parser.parse_args()))
    out = Path("build") / "bench-webhooks.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median: no webhooks {result['median_rate_no_webhooks']:.1f}/s, every endpoint down "
          f"{result['median_rate_endpoints_down']:.1f}/s: ratio "
          f"{result['ratio_down_over_none']:.3f} (written to {out})")
