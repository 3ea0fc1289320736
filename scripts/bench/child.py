"""One worker process of the benchmark: ours (the real ExecutorWorker) or a peer's.

Protocol with the parent: the child prints `ready`, waits for a line on stdin (`go`), then
works. A `*-drain` child stops when the queue is empty and prints one JSON line; a `*-worker`
child works until the next stdin line (`stop`), then prints one JSON line. Every child reports
its own peak RSS, so the worker's memory is measured without the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from common import asyncpg_connect, peak_rss_mb

warnings.simplefilter("ignore")


async def _line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _say(obj: Any) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


# -- ours ----------------------------------------------------------------------------------------

class NoopRail:
    """An in-process rail that accepts every payment at once: the outbox's own cost."""

    supports_lookup = True

    async def dispatch(self, reference: str, *, rail_type: str, payload: Any,
                       timeout: float) -> Any:  # noqa: ASYNC109
        from symphony.rails import DispatchOutcome, DispatchResult

        return DispatchResult(DispatchOutcome.SUCCESS, rail_transaction_id=f"noop-{reference}")

    async def lookup(self, reference: str, *, timeout: float) -> Any:  # noqa: ASYNC109
        from symphony.rails import LookupResult, LookupStatus

        return LookupResult(LookupStatus.NOT_FOUND)

    async def aclose(self) -> None:
        return None


async def _ours(args: argparse.Namespace, drain: bool) -> dict[str, Any]:
    from symphony.db import Database, DatabaseSettings, EmbeddedServer
    from symphony.outbox import OutboxStore
    from symphony.rails.http import HttpRailClient
    from symphony.services.worker import ExecutorWorker, WorkerConfig

    home = Path(args.home)
    settings = DatabaseSettings(SYMPHONY_HOME=str(home),
                                SYMPHONY_DB_POOL_MAX_SIZE=args.pool)
    server = EmbeddedServer(home / "pgdata")
    db = await Database.open(settings, embedded=server)
    store = OutboxStore(db)
    rail: Any = NoopRail() if args.rail == "noop" else HttpRailClient(
        args.rail_url, max_connections=max(args.concurrency, 8))
    config = WorkerConfig.load(worker_id=f"bench-{os.getpid()}", batch_size=args.batch,
                               max_concurrency=args.concurrency, poll_interval_seconds=0.2)
    worker = ExecutorWorker(store, rail, config)
    _say("ready")
    await _line()
    started = time.perf_counter()
    cpu0 = time.process_time()
    await worker.start()
    if drain:
        # Asked as the admin, cheaply: the status view counts the whole ledger.
        import psycopg

        async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
            while True:
                await asyncio.sleep(0.02)
                cur = await conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM symphony.payment_outbox_pending)")
                row = await cur.fetchone()
                if row is not None and not row[0]:
                    break
        elapsed = time.perf_counter() - started
    else:
        await _line()
        elapsed = time.perf_counter() - started
    await worker.stop()
    await rail.aclose()
    await db.close()
    return {"seconds": elapsed, "cpu_seconds": time.process_time() - cpu0,
            "rss_mb": peak_rss_mb()}


# -- pgqueuer ------------------------------------------------------------------------------------

async def _pgqueuer(args: argparse.Namespace, drain: bool) -> dict[str, Any]:
    """`--managers` QueueManagers in this process, each on its own asyncpg connection (the
    driver and the "dedicated connection per QueueManager" of pgqueuer's performance guide),
    each dequeuing `--batch` jobs a round trip."""
    from datetime import timedelta

    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    conns = [await asyncpg_connect(args.dsn) for _ in range(args.managers)]
    managers = [QueueManager(Queries(AsyncpgDriver(c))) for c in conns]
    latencies: list[float] = []

    for qm in managers:
        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            # The handler's start: what pgqueuer's own latency figure would be. The completion's
            # commit (the fair comparison with ours) is read from pgqueuer_log by the parent.
            if not drain and job.payload:
                latencies.append(time.time() - float(job.payload.decode()))

    _say("ready")
    await _line()
    started = time.perf_counter()
    mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
    runs = [asyncio.create_task(qm.run(batch_size=args.batch, mode=mode,
                                       dequeue_timeout=timedelta(seconds=1)))
            for qm in managers]
    if not drain:
        await _line()
        for qm in managers:
            qm.shutdown.set()
    await asyncio.gather(*runs)
    elapsed = time.perf_counter() - started
    for c in conns:
        await c.close()
    return {"seconds": elapsed, "rss_mb": peak_rss_mb(), "latencies": latencies}


# -- procrastinate -------------------------------------------------------------------------------

async def _procrastinate(args: argparse.Namespace, drain: bool) -> dict[str, Any]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=args.dsn,
        min_size=2, max_size=max(4, args.concurrency + 2)))
    latencies: list[float] = []

    @app.task(name="noop", queue="bench")
    async def noop(t0: float | None = None) -> None:
        if not drain and t0 is not None:
            latencies.append(time.time() - t0)

    async with app.open_async():
        _say("ready")
        await _line()
        started = time.perf_counter()
        run = asyncio.create_task(app.run_worker_async(
            queues=["bench"], concurrency=args.concurrency, wait=not drain,
            install_signal_handlers=False, fetch_job_polling_interval=1.0))
        if drain:
            await run
        else:
            await _line()
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "rss_mb": peak_rss_mb(), "latencies": latencies}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["ours-drain", "ours-worker", "pgq-drain", "pgq-worker",
                                         "proc-drain", "proc-worker"])
    parser.add_argument("--home", default="")
    parser.add_argument("--dsn", default="")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--managers", type=int, default=1)
    parser.add_argument("--rail", default="noop")
    parser.add_argument("--rail-url", default="")
    args = parser.parse_args()
    who, _, role = args.kind.partition("-")
    drain = role == "drain"
    runner = {"ours": _ours, "pgq": _pgqueuer, "proc": _procrastinate}[who]
    _say(asyncio.run(runner(args, drain)))


if __name__ == "__main__":
    main()
