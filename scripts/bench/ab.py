"""Alternating before/after runs of the enqueue path: two source trees, one server, one run.

    python scripts/bench/ab.py BEFORE_SRC AFTER_SRC [--mode api|single|batch]
                               [--clients N] [--seconds S] [--rounds R]

Each source tree (the `src` folder of a checkout, say of main and of a branch) is imported by
a child process of its own (PYTHONPATH), and the children take turns against one embedded
server: before, after, pgqueuer, before, after, pgqueuer, ... The schema is bootstrapped once,
by the running checkout, so this compares Python-side changes (the trees must agree on the
schema). Every child reports items/s and its own CPU per item; pgqueuer's enqueue, measured
between them, is the same-run reference every ratio of the benchmark is taken against.
Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchServer

HERE = Path(__file__).resolve().parent
PAYLOAD = {"amount": "10.00", "currency": "EUR", "destination": "acct-1"}


# -- the child: one tree, one measurement -------------------------------------------------------

async def child(home: str, mode: str, clients: int, seconds: float, tag: str) -> None:
    from symphony.db import Database, DatabaseSettings, EmbeddedServer
    from symphony.outbox import OutboxStore, PaymentInstruction

    settings = DatabaseSettings(SYMPHONY_HOME=home, SYMPHONY_DB_POOL_MAX_SIZE=24)
    db = await Database.open(settings, embedded=EmbeddedServer(Path(home) / "pgdata"))
    store = OutboxStore(db)
    grouped = OutboxStore(db, group_commit=True)
    participants = [f"ab-{p}" for p in range(100)]
    counter = 0

    def instruction(p: str) -> Any:
        nonlocal counter
        counter += 1
        return PaymentInstruction(f"i-{tag}-{counter}", f"k-{counter}", p, "RTP", PAYLOAD)

    async def rate(secs: float) -> tuple[float, float]:
        done = 0
        deadline = time.perf_counter() + secs

        async def caller(n: int) -> None:
            nonlocal done
            i = n
            while time.perf_counter() < deadline:
                p = participants[i % 100]
                i += clients
                if mode == "batch":
                    batch = [instruction(participants[(i + k) % 100]) for k in range(100)]
                    results = await store.enqueue_batch(batch)
                    done += sum(1 for r in results if not isinstance(r, Exception))
                elif mode == "api":
                    await grouped.enqueue(instruction(p))
                    done += 1
                else:
                    await store.enqueue(instruction(p))
                    done += 1

        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        return done / elapsed, cpu / max(done, 1)

    await rate(min(1.0, seconds))  # warm-up: pools filled, plans cached, statements prepared
    items_per_s, cpu_per_item = await rate(seconds)
    await grouped.aclose()
    await db.close()
    print(json.dumps({"rate": items_per_s, "cpu_ms_per_item": cpu_per_item * 1000}))


# -- the parent -----------------------------------------------------------------------------------

def run_child(src: str, home: str, mode: str, clients: int, seconds: float, tag: str
              ) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": src, "SYMPHONY_ENV": "development"}
    env.pop("DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", home, mode, str(clients), str(seconds), tag],
        capture_output=True, text=True, env=env, timeout=seconds * 10 + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {src} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def parent(args: argparse.Namespace) -> None:
    from run import PgQueuer

    from symphony.db import Database, DatabaseSettings, bootstrap
    from symphony.outbox import AccessStore

    bench = BenchServer.start()
    try:
        settings = DatabaseSettings(SYMPHONY_HOME=str(bench.home))
        await bootstrap(settings, embedded=bench.server)
        db = await Database.open(settings, embedded=bench.server)
        access = AccessStore(db)
        for p in range(100):
            await access.add_participant(f"ab-{p}", "benchmark participant")
        await db.close()
        pgq = PgQueuer(bench)
        await pgq.open()
        sides = {"before": args.before, "after": args.after}
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": [], "pgqueuer": []}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for side in order:
                runs[side].append(await asyncio.to_thread(
                    run_child, sides[side], str(bench.home), args.mode, args.clients,
                    args.seconds, f"{side}{r}"))
            peer = await pgq.enqueue_rate(args.clients, args.seconds, args.mode == "batch")
            runs["pgqueuer"].append({"rate": peer})
            b, a = runs["before"][-1], runs["after"][-1]
            print(f"round {r + 1}: before {b['rate']:8.0f}/s {b['cpu_ms_per_item']:.3f} ms CPU"
                  f" | after {a['rate']:8.0f}/s {a['cpu_ms_per_item']:.3f} ms CPU"
                  f" | pgqueuer {peer:8.0f}/s", flush=True)
        med = {k: statistics.median(x["rate"] for x in v) for k, v in runs.items()}
        cpu = {k: statistics.median(x["cpu_ms_per_item"] for x in runs[k])
               for k in ("before", "after")}
        ratio = {k: statistics.median(x["rate"] / p["rate"] for x, p in
                                      zip(runs[k], runs["pgqueuer"], strict=True))
                 for k in ("before", "after")}
        print(json.dumps({"mode": args.mode, "clients": args.clients, "seconds": args.seconds,
                          "rounds": args.rounds, "median_rate": med,
                          "median_cpu_ms_per_item": cpu, "median_ratio_to_pgqueuer": ratio,
                          "load_average": os.getloadavg()}, indent=1))
    finally:
        bench.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        home, mode, clients, seconds, tag = sys.argv[2:7]
        asyncio.run(child(home, mode, int(clients), float(seconds), tag))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the src folder of the 'before' checkout")
    parser.add_argument("after", help="the src folder of the 'after' checkout")
    parser.add_argument("--mode", choices=("api", "single", "batch"), default="api")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(parent(parser.parse_args()))


if __name__ == "__main__":
    main()
