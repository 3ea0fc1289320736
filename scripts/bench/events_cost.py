"""What the payment events cost the payment path: enqueue, and claim + complete, before and
after the `payment_events` migration, side by side on one server in one process.

Two databases on one throwaway embedded PostgreSQL: one migrated to the migration before
`payment_events` ("before"), one to the latest ("after"). Each round, in alternating order,
runs on each database: `--items` enqueues (one per transaction, over `--participants`
participants), the same number through `enqueue_payment_outbox_batch` (`--batch` per call),
then claim + complete of everything due in batches of `--batch` (all DISPATCHED, so every
item writes its payment.dispatched event). SQL straight from one connection each (no pool, no
role switch), so the figures are the database's share. Besides the wall-clock rates, each
step reports the server backend's own CPU time per item (utime + stime of the backend process
from /proc, so other load on the machine does not count) and the WAL bytes per item. Prints
one JSON document with the medians of `--rounds` rounds and the ratios after / before (rates:
1.0 = no cost, lower is slower; CPU and WAL per item: 1.0 = no cost, higher is dearer):

    python scripts/bench/events_cost.py --rounds 6 --items 1000 --out /tmp/events-cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchServer

from symphony.db import migrate
from symphony.db.migration import load_migrations

_ENQUEUE = ("SELECT outbox_id FROM symphony.enqueue_payment_outbox(%s, %s, %s, 'ACH', "
            "%s::jsonb)")
_BATCH = ("SELECT outbox_id FROM symphony.enqueue_payment_outbox_batch("
          "%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[])")
_CLAIM = "SELECT outbox_id, lease_token FROM symphony.claim_outbox_batch('bench', %s, 60)"
_COMPLETE = ("SELECT count(*) FROM symphony.complete_outbox_batch(%s::uuid[], %s::uuid[], "
             "%s::text[], %s::text[], %s::text[], %s::boolean[], %s::text[])")
_PAYLOAD = json.dumps({"amount": "12.50", "currency": "EUR", "destination": "DE89-0001"})


_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU milliseconds of the connection's server process and WAL bytes, between two reads."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.stat = Path(f"/proc/{row[0]}/stat")

    def read(self) -> tuple[float, int]:
        fields = self.stat.read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) * _TICK_MS  # utime, stime
        row = self.conn.execute(
            "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return cpu, int(row[0])


def _enqueue_one_by_one(conn: psycopg.Connection[Any], items: int, participants: int) -> float:
    t0 = time.perf_counter()
    for i in range(items):
        key = uuid.uuid4().hex
        conn.execute(_ENQUEUE, (f"i-{key}", key, f"bench-{i % participants}", _PAYLOAD))
    return time.perf_counter() - t0


def _enqueue_batched(conn: psycopg.Connection[Any], items: int, participants: int,
                     batch: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, items, batch):
        n = min(batch, items - start)
        keys = [uuid.uuid4().hex for _ in range(n)]
        conn.execute(_BATCH, ([f"i-{k}" for k in keys], keys,
                              [f"bench-{(start + j) % participants}" for j in range(n)],
                              ["ACH"] * n, [_PAYLOAD] * n))
    return time.perf_counter() - t0


def _drain(conn: psycopg.Connection[Any], batch: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    done = 0
    while True:
        rows = conn.execute(_CLAIM, (batch,)).fetchall()
        if not rows:
            break
        n = len(rows)
        conn.execute(_COMPLETE, ([r[0] for r in rows], [r[1] for r in rows],
                                 ["DISPATCHED"] * n, [None] * n, [None] * n, [False] * n,
                                 ["rtx"] * n))
        done += n
    return time.perf_counter() - t0, done


async def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--participants", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    events = next(m for m in load_migrations() if m.name.endswith("_payment_events.sql"))
    bench = BenchServer.start()
    try:
        dsns = {"before": bench.create_database("events_before"),
                "after": bench.create_database("events_after")}
        await migrate(dsns["before"], up_to=events.version - 1)
        await migrate(dsns["after"])
        conns = {name: psycopg.connect(dsn, autocommit=True) for name, dsn in dsns.items()}
        for conn in conns.values():
            for p in range(args.participants):
                conn.execute("SELECT symphony.add_participant(%s, %s)",
                             (f"bench-{p}", f"bench {p}"))
            # Warm-up: plans and caches of every statement, on both sides.
            _enqueue_one_by_one(conn, 50, args.participants)
            _enqueue_batched(conn, 50, args.participants, args.batch)
            _drain(conn, args.batch)
        meters = {name: Meter(conn) for name, conn in conns.items()}
        runs: dict[str, dict[str, list[float]]] = {name: {} for name in dsns}

        def record(name: str, step: str, items: int, seconds: float,
                   start: tuple[float, int], end: tuple[float, int]) -> None:
            figures = runs[name]
            figures.setdefault(f"{step}_per_s", []).append(items / seconds)
            figures.setdefault(f"{step}_cpu_ms_per_item", []).append((end[0] - start[0]) / items)
            figures.setdefault(f"{step}_wal_bytes_per_item", []).append((end[1] - start[1]) / items)

        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for name in order:
                conn, meter = conns[name], meters[name]
                m0 = meter.read()
                one = _enqueue_one_by_one(conn, args.items, args.participants)
                m1 = meter.read()
                batched = _enqueue_batched(conn, args.items, args.participants, args.batch)
                m2 = meter.read()
                drained, n = _drain(conn, args.batch)
                m3 = meter.read()
                assert n == 2 * args.items, (name, n)
                record(name, "enqueue", args.items, one, m0, m1)
                record(name, "enqueue_batched", args.items, batched, m1, m2)
                record(name, "claim_complete", n, drained, m2, m3)
        events_written = conns["after"].execute(
            "SELECT count(*) FROM symphony.payment_events").fetchone()
        for conn in conns.values():
            conn.close()
    finally:
        bench.stop()
    medians = {name: {k: round(statistics.median(v), 4) for k, v in figures.items()}
               for name, figures in runs.items()}
    result: dict[str, Any] = {
        "server": bench.settings.get("server_version"),
        "rounds": args.rounds, "items_per_round": args.items,
        "participants": args.participants, "batch": args.batch,
        "median": medians,
        "load_average_at_end": os.getloadavg(),
        "ratio_after_over_before": {
            k: round(medians["after"][k] / medians["before"][k], 3) for k in medians["after"]},
        "all": runs,
        "events_written_after": events_written[0] if events_written else None,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:])), indent=2))
