"""Where the claim and the completion spend their server time: each trigger function's calls
and own time per item, and each statement inside the functions, on one throwaway server.

    python scripts/bench/trigger_cost.py [--items 20000] [--batch 500] [--participants 100]

Fills `--items` due payments (the batch enqueue, not measured), then claims and completes them
all (DISPATCHED, so each completion writes its ledger row, its pending delete and its
payment.dispatched event) in batches of `--batch`, from one connection as the owner (no pool,
no role switch: the database's share only). PostgreSQL counts for us: `track_functions = pl`
gives every PL/pgSQL function's calls and self time (`pg_stat_user_functions`: a trigger
function's row is its per-row cost), `pg_stat_statements.track = all` every statement run
inside the functions and triggers. Prints one JSON document: per step (claim, complete) the
statement's time per item, then the functions and the nested statements by total time, each
per item (microseconds) and as calls per item — a per-row trigger shows 1 call per item, a
statement-level one 1/batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchServer

_BATCH = ("SELECT count(*) FROM symphony.enqueue_payment_outbox_batch("
          "%s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[])")
_CLAIM = "SELECT outbox_id, lease_token FROM symphony.claim_outbox_batch('bench', %s, 110)"
_COMPLETE = ("SELECT count(*) FROM symphony.complete_outbox_batch(%s::uuid[], %s::uuid[], "
             "%s::text[], %s::text[], %s::text[], %s::boolean[], %s::text[])")
_PAYLOAD = json.dumps({"amount": "12.50", "currency": "EUR", "destination": "DE89-0001"})


def _flush(conn: psycopg.Connection[Any]) -> None:
    """This backend's function counters reach the shared statistics at most once a second, at
    a transaction's end: forced here, so a step's figures hold all of its calls and no more."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def _reset(conn: psycopg.Connection[Any]) -> None:
    _flush(conn)
    conn.execute("SELECT pg_stat_statements_reset()")
    conn.execute("SELECT pg_stat_reset()")  # pg_stat_user_functions among them


def _functions(conn: psycopg.Connection[Any], items: int) -> list[dict[str, Any]]:
    _flush(conn)
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions"
        " WHERE schemaname = 'symphony' ORDER BY self_time DESC").fetchall()
    return [{"function": r[0], "calls_per_item": round(r[1] / items, 3),
             "total_us_per_item": round(r[2] * 1000 / items, 1),
             "self_us_per_item": round(r[3] * 1000 / items, 1)} for r in rows]


def _statements(conn: psycopg.Connection[Any], items: int, top: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT calls, total_exec_time, toplevel,"
        "       left(regexp_replace(query, '\\s+', ' ', 'g'), 110)"
        "  FROM pg_stat_statements WHERE query NOT LIKE '%%pg_stat%%'"
        " ORDER BY total_exec_time DESC LIMIT %s", (top,)).fetchall()
    return [{"calls_per_item": round(r[0] / items, 3),
             "us_per_item": round(r[1] * 1000 / items, 1), "toplevel": r[2], "query": r[3]}
            for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--participants", type=int, default=100)
    args = parser.parse_args()
    bench = BenchServer.start()
    try:
        with psycopg.connect(bench.admin_dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_functions = 'pl'")
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
            conn.execute("SELECT pg_reload_conf()")
        import asyncio

        from symphony.db import DatabaseSettings, bootstrap

        asyncio.run(bootstrap(DatabaseSettings(SYMPHONY_HOME=str(bench.home)),
                              embedded=bench.server))
        dsn = bench.dsn("symphony")
        run = uuid.uuid4().hex[:6]
        people = [f"tc-{run}-{p}" for p in range(args.participants)]
        with psycopg.connect(dsn, autocommit=True) as conn:
            for p in people:
                conn.execute("INSERT INTO symphony.participants (participant_id, display_name)"
                             " VALUES (%s, 'trigger cost')", (p,))
            for start in range(0, args.items, 1000):
                n = min(1000, args.items - start)
                ids = [f"i-{run}-{start + k}" for k in range(n)]
                conn.execute(_BATCH, (ids, ids, [people[k % len(people)] for k in range(n)],
                                      ["ACH"] * n, [_PAYLOAD] * n))
            result: dict[str, Any] = {"items": args.items, "batch": args.batch,
                                      "participants": args.participants}
            leases: list[tuple[Any, Any]] = []
            _reset(conn)
            started = time.perf_counter()
            while True:
                got = conn.execute(_CLAIM, (args.batch,)).fetchall()
                if not got:
                    break
                leases.extend((r[0], r[1]) for r in got)
            result["claim"] = {"seconds": round(time.perf_counter() - started, 2),
                               "functions": _functions(conn, len(leases)),
                               "statements": _statements(conn, len(leases), 15)}
            _reset(conn)
            started = time.perf_counter()
            for k in range(0, len(leases), args.batch):
                chunk = leases[k:k + args.batch]
                n = len(chunk)
                conn.execute(_COMPLETE, ([c[0] for c in chunk], [c[1] for c in chunk],
                                         ["DISPATCHED"] * n, [None] * n, [None] * n,
                                         [False] * n, [f"rail-{c[0]}" for c in chunk]))
            result["complete"] = {"seconds": round(time.perf_counter() - started, 2),
                                  "functions": _functions(conn, len(leases)),
                                  "statements": _statements(conn, len(leases), 20)}
        print(json.dumps(result, indent=1))
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
