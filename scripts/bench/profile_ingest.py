"""Profile one path of the benchmark on its own server: where an enqueued item's time goes.

    python scripts/bench/profile_ingest.py [api|single|batch] [clients] [seconds]

Prints items/s, the group commit's batch sizes, pg_stat_statements' top statements and the
benchmark process's own top functions (cProfile), so Python and PostgreSQL time can be told
apart.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from common import BenchServer
from run import Ours


async def main(mode: str, clients: int, seconds: float) -> None:
    bench = BenchServer.start()
    ours = Ours(bench)
    try:
        await ours.open()
        await ours.enqueue_rate(clients, 1.0, mode if mode != "api" else "group",
                                ours.participants)  # warm-up
        with psycopg.connect(bench.dsn("symphony"), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        sizes: list[int] = []
        original = ours.store.enqueue_batch

        async def counted(instructions, **kw):  # type: ignore[no-untyped-def]
            sizes.append(len(instructions))
            return await original(instructions, **kw)

        import os
        if os.environ.get("WAKE_AFTER"):
            ours.grouped._group._wake_after_commit = os.environ["WAKE_AFTER"] == "1"  # type: ignore[union-attr]
        if os.environ.get("IN_FLIGHT"):
            ours.grouped._group._max_in_flight = int(os.environ["IN_FLIGHT"])  # type: ignore[union-attr]
        ours.store.enqueue_batch = counted  # type: ignore[method-assign]
        ours.grouped.enqueue_batch = counted  # type: ignore[method-assign]
        prof = cProfile.Profile()
        cpu = time.process_time()
        prof.enable()
        rate = await ours.enqueue_rate(clients, seconds, mode if mode != "api" else "group",
                                       ours.participants)
        prof.disable()
        cpu = time.process_time() - cpu
        print(f"{mode} {clients} clients: {rate:,.0f} items/s; client CPU {cpu:.2f}s "
              f"in {seconds}s; batches {len(sizes)}, mean size "
              f"{(sum(sizes) / len(sizes)) if sizes else 0:.1f}")
        with psycopg.connect(bench.dsn("symphony")) as conn:
            for row in conn.execute(
                    "SELECT calls, round(total_exec_time::numeric, 1), "
                    "round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\\s+', ' ',"
                    " 'g'), 90) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"):
                print(*row)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    finally:
        await ours.close()
        bench.stop()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0] if args else "api", int(args[1]) if len(args) > 1 else 16,
                     float(args[2]) if len(args) > 2 else 3.0))
