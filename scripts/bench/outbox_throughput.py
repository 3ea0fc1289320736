"""Throughput of the outbox's hot path: enqueue, claim and complete, with no rail in the way.

Runs against `DATABASE_URL` (which must be migrated: `symphony migrate`) or, unset, a throwaway
embedded PostgreSQL that is deleted afterwards. Prints one JSON document:

    python scripts/bench/outbox_throughput.py --items 20000 --batch 256 --enqueuers 16

What it measures, each on its own:
* enqueue: `--enqueuers` concurrent callers, one `enqueue_payment_outbox` transaction each;
* claim + complete: one worker loop, `claim_outbox_batch` then one `complete_outbox_batch`
  (all DISPATCHED) per batch — the database's share of dispatching, per item;
* round trip: a one-statement transaction as a role (BEGIN, SET LOCAL ROLE, current_user check,
  the query, COMMIT, pipelined), the fixed cost every call to `symphony.db` pays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from symphony.db import Database, DatabaseSettings, EmbeddedServer, Role, bootstrap
from symphony.outbox import AccessStore, Completion, OutboxStore, Outcome, PaymentInstruction

_PARTICIPANTS = 8


async def _enqueue(store: OutboxStore, items: int, enqueuers: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    counter = iter(range(items))
    latencies: list[float] = []
    # Enqueue accepts registered participants only: this run's own.
    access = AccessStore(store.db)
    for p in range(_PARTICIPANTS):
        await access.add_participant(f"bench-{run}-{p}", f"bench participant {p}")

    async def caller(n: int) -> None:
        for i in counter:
            started = time.perf_counter()
            await store.enqueue(PaymentInstruction(
                instruction_id=f"bench-{run}-{i}", idempotency_key=f"k-{i}",
                participant_id=f"bench-{run}-{n % _PARTICIPANTS}", rail_type="RTP",
                payload={"amount": "10.00", "currency": "EUR", "destination": f"acct-{i}"},
            ))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(enqueuers)))
    elapsed = time.perf_counter() - started
    return _summary(items, elapsed, latencies)


async def _claim_complete(store: OutboxStore, items: int, batch: int) -> dict[str, float]:
    done = 0
    latencies: list[float] = []
    started = time.perf_counter()
    while done < items:
        cycle = time.perf_counter()
        claimed = await store.claim("bench-worker", batch, 120)
        if not claimed:
            break
        await store.complete_batch([
            Completion(c.outbox_id, c.lease_token, Outcome.DISPATCHED, rail_transaction_id="b")
            for c in claimed
        ])
        latencies.append(time.perf_counter() - cycle)
        done += len(claimed)
    elapsed = time.perf_counter() - started
    summary = _summary(done, elapsed, latencies)
    summary["batches"] = len(latencies)
    return summary


async def _round_trip(db: Database, count: int) -> dict[str, float]:
    latencies: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        await db.fetch_one(Role.EXECUTOR, "count_zombies")
        latencies.append(time.perf_counter() - started)
    return {
        "calls": count,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
    }


def _summary(items: int, elapsed: float, latencies: list[float]) -> dict[str, float]:
    return {
        "items": items,
        "seconds": round(elapsed, 3),
        "items_per_second": round(items / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(latencies) * 1000, 3) if latencies else 0.0,
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3) if latencies else 0.0,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--enqueuers", type=int, default=16)
    parser.add_argument("--round-trips", type=int, default=1000)
    args = parser.parse_args(argv)

    server: EmbeddedServer | None = None
    if os.environ.get("DATABASE_URL"):
        settings = DatabaseSettings(SYMPHONY_DB_POOL_MAX_SIZE=max(args.enqueuers, 2))
    else:
        home = Path(tempfile.mkdtemp(prefix="symphony-bench-"))
        server = EmbeddedServer(home / "pgdata", delete_on_stop=True)
        settings = DatabaseSettings(
            SYMPHONY_HOME=str(home), SYMPHONY_DB_POOL_MAX_SIZE=max(args.enqueuers, 2))
        await bootstrap(settings, embedded=server)
    try:
        async with await Database.open(settings, embedded=server) as db:
            store = OutboxStore(db)
            return {
                "server_version": db.endpoint.server_version,
                "embedded": db.endpoint.embedded,
                "enqueue": await _enqueue(store, args.items, args.enqueuers),
                "claim_complete": await _claim_complete(store, args.items, args.batch),
                "round_trip": await _round_trip(db, args.round_trips),
            }
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:])), indent=2))
