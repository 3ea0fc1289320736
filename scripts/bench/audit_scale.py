"""What the audit and the tamper-evident ledger cost: `audit verify` on a big ledger, and the
digest triggers' cost per insert.

Runs on a throwaway embedded PostgreSQL (deleted afterwards), or on `DATABASE_URL` (where it
creates and drops a database of its own). Prints one JSON document and writes it to `--out`:

    python scripts/bench/audit_scale.py --rows 1000000 --out /tmp/audit-scale.json

1. Scale. A ledger of about `--rows` rows is generated set-based, as the admin, one INSERT ..
   SELECT per attempt level (the ledger's own triggers check and seal every row; no
   enqueue/claim/complete calls): 70 % of the items DISPATCHING, DISPATCHED; 10 % retried once
   then dispatched; 5 % failed; 5 % a zombie requeue then dispatched (with its lookup mark);
   5 % pending after a retryable failure; 5 % pending, never claimed. Rows are dated a month
   back; `--recent` items of today are added through the real functions for the incremental
   audit. Then: a checkpoint (control), a full `audit verify` (auditor, one snapshot), an
   incremental one (`since` one hour ago).
2. Checkpoint contention. Claims and completions (batches of 10, through the functions)
   timed with nothing else running, while `take_ledger_checkpoint()` runs, and while the
   checkpoint of migration 0009 (a SHARE lock on the ledger across its scans) is played.
3. Per insert. `--inserts` ledger rows appended in one statement with the digest trigger
   enabled and, in the same run on the same table, disabled (its NOT NULL dropped for the
   occasion in this throwaway database); and `--cycles` claim + complete cycles (batches of
   100) through the real functions, each way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from symphony.db import Database, DatabaseSettings, EmbeddedServer, Principal, bootstrap
from symphony.outbox import (
    AccessStore,
    AuditStore,
    Completion,
    OutboxStore,
    Outcome,
    PaymentInstruction,
)

_PARTICIPANTS = 16

# Items by shape: (share, rows, states by attempt level, pending, zombie)
_GENERATE = """
CREATE TEMP TABLE bench_items AS
SELECT i, gen_random_uuid() AS outbox_id,
       'bench-p' || (i %% {participants}) AS participant_id,
       (i / {participants}) + 1 AS sequence_id,
       CASE WHEN i %% 100 < 70 THEN 'ok'
            WHEN i %% 100 < 80 THEN 'retried'
            WHEN i %% 100 < 85 THEN 'failed'
            WHEN i %% 100 < 90 THEN 'zombie'
            WHEN i %% 100 < 95 THEN 'retrying'
            ELSE 'fresh' END AS shape,
       now() - interval '30 days' + make_interval(secs => i * 0.001) AS at
  FROM generate_series(0, %(items)s - 1) AS i;
"""

_LEVELS = {
    1: ("CASE WHEN b.shape <> 'fresh' THEN 'DISPATCHING' END", None),
    2: ("CASE b.shape WHEN 'ok' THEN 'DISPATCHED' WHEN 'retried' THEN 'RETRYABLE' "
        "WHEN 'failed' THEN 'FAILED' WHEN 'zombie' THEN 'ZOMBIE_REQUEUE' "
        "WHEN 'retrying' THEN 'RETRYABLE' END", 1),
    3: ("CASE WHEN b.shape IN ('retried', 'zombie') THEN 'DISPATCHING' END", None),
    4: ("CASE WHEN b.shape IN ('retried', 'zombie') THEN 'DISPATCHED' END", 3),
}


async def _admin(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(statement, params)
        return list(await cur.fetchall()) if cur.description else []


async def _admin_script(dsn: str, statements: list[tuple[str, Any]]) -> float:
    """Run statements in one transaction; seconds taken."""
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for statement, params in statements:
            await conn.execute(statement, params)
        await conn.commit()
    return time.perf_counter() - started


async def generate(dsn: str, items: int) -> dict[str, Any]:
    timings: dict[str, float] = {}
    steps: list[tuple[str, Any]] = [
        (_GENERATE.format(participants=_PARTICIPANTS), {"items": items}),
        ("INSERT INTO symphony.participants (participant_id, display_name) "
         "SELECT 'bench-p' || n, 'bench ' || n FROM generate_series(0, %s - 1) n "
         "ON CONFLICT DO NOTHING", (_PARTICIPANTS,)),
        ("INSERT INTO symphony.participant_outbox_sequences (participant_id, last_sequence_id) "
         "SELECT participant_id, max(sequence_id) FROM bench_items GROUP BY participant_id",
         None),
        ("INSERT INTO symphony.payment_instruction_registry "
         "(instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, rail_type, "
         " payload, created_at) "
         "SELECT 'bench-' || b.i, 'key-' || b.i, b.outbox_id, b.participant_id, b.sequence_id, "
         "       'RTP', jsonb_build_object('amount', '10.00', 'currency', 'EUR', "
         "                                 'destination', 'acct-' || b.i), b.at "
         "  FROM bench_items b", None),
    ]
    timings["registry_s"] = await _admin_script(dsn, [
        *steps, ("CREATE TABLE public.bench_items AS SELECT * FROM bench_items", None)])
    for level, (state_sql, token_from) in _LEVELS.items():
        token = ("gen_random_uuid()" if token_from is None else
                 f"(SELECT t.lease_token FROM symphony.payment_outbox_attempts t "
                 f"  WHERE t.outbox_id = b.outbox_id AND t.attempt_no = {token_from})")
        statement = (
            "INSERT INTO symphony.payment_outbox_attempts "
            "(outbox_id, attempt_no, state, worker_id, lease_token, error_code, "
            " rail_transaction_id, recorded_at, recorded_by) "
            f"SELECT b.outbox_id, {level}, s.state::symphony.attempt_state, 'bench-worker', "
            f"       {token}, CASE WHEN s.state IN ('RETRYABLE', 'FAILED') THEN 'DECLINED' "
            "                     WHEN s.state = 'ZOMBIE_REQUEUE' THEN 'LEASE_EXPIRED' END, "
            "       CASE WHEN s.state = 'DISPATCHED' THEN 'rtx-' || b.i END, "
            f"       b.at + make_interval(secs => {level}), 'symphony_executor_svc' "
            f"  FROM public.bench_items b CROSS JOIN LATERAL (SELECT {state_sql} AS state) s "
            " WHERE s.state IS NOT NULL")
        timings[f"level_{level}_s"] = await _admin_script(dsn, [(statement, None)])
    timings["pending_s"] = await _admin_script(dsn, [
        ("INSERT INTO symphony.payment_outbox_pending "
         "(outbox_id, participant_id, sequence_id, attempt_count, last_attempt_no, "
         " next_attempt_at, created_at, last_error_code) "
         "SELECT b.outbox_id, b.participant_id, b.sequence_id, "
         "       CASE b.shape WHEN 'retrying' THEN 1 ELSE 0 END, "
         "       CASE b.shape WHEN 'retrying' THEN 2 ELSE 0 END, "
         "       now() + interval '1 day', b.at, "
         "       CASE b.shape WHEN 'retrying' THEN 'DECLINED' END "
         "  FROM public.bench_items b WHERE b.shape IN ('retrying', 'fresh')", None),
        ("INSERT INTO symphony.outbox_lookup_marks (outbox_id, attempt_no, reason, marked_at) "
         "SELECT b.outbox_id, 2, 'ZOMBIE_REQUEUE', b.at FROM public.bench_items b "
         " WHERE b.shape = 'zombie'", None),
        ("DROP TABLE public.bench_items", None),
        ("ANALYZE", None),
    ])
    rows = await _admin(dsn, "SELECT count(*) FROM symphony.payment_outbox_attempts")
    return {"items": items, "ledger_rows": int(rows[0][0]),
            "generate_seconds": {k: round(v, 2) for k, v in timings.items()}}


async def recent_items(db: Database, count: int) -> None:
    store = OutboxStore(db)
    run = uuid.uuid4().hex[:8]
    await AccessStore(db).add_participant(f"recent-{run}", "recent items")
    for n in range(count):
        await store.enqueue(PaymentInstruction(
            instruction_id=f"recent-{run}-{n}", idempotency_key=f"k-{n}",
            participant_id=f"recent-{run}", rail_type="RTP",
            payload={"amount": "1.00", "currency": "EUR", "destination": f"acct-{n}"}))
    while claimed := await store.claim("recent-worker", 100, 60):
        await store.complete_batch([Completion(c.outbox_id, c.lease_token, Outcome.DISPATCHED,
                                               rail_transaction_id=f"rtx-{c.outbox_id}")
                                    for c in claimed])


async def per_insert(dsn: str, db: Database, inserts: int, cycles: int) -> dict[str, Any]:
    """The digest triggers on and off, same run, same tables."""
    store = OutboxStore(db)
    run = uuid.uuid4().hex[:8]
    await AccessStore(db).add_participant(f"ins-{run}", "per-insert bench")
    seal_off = [
        ("ALTER TABLE symphony.payment_outbox_attempts ALTER COLUMN row_digest DROP NOT NULL",
         None),
        ("ALTER TABLE symphony.payment_instruction_registry "
         "ALTER COLUMN instruction_digest DROP NOT NULL", None),
        ("ALTER TABLE symphony.payment_outbox_attempts "
         "DISABLE TRIGGER payment_outbox_attempts_seal", None),
        ("ALTER TABLE symphony.payment_instruction_registry "
         "DISABLE TRIGGER payment_instruction_registry_seal", None),
    ]
    seal_on = [
        ("ALTER TABLE symphony.payment_outbox_attempts "
         "ENABLE ALWAYS TRIGGER payment_outbox_attempts_seal", None),
        ("ALTER TABLE symphony.payment_instruction_registry "
         "ENABLE ALWAYS TRIGGER payment_instruction_registry_seal", None),
    ]

    offset = iter(range(1_000_000, 1_000_000_000, inserts))

    async def raw_inserts(tag: str) -> float:
        first = next(offset)
        prefix = f"{tag}-{first}-{run}-"
        # Registry rows first (not timed), then one statement appending a DISPATCHING row to
        # each: the ledger's triggers (transition check, and the seal when on) run per row.
        await _admin_script(dsn, [(
            "INSERT INTO symphony.payment_instruction_registry "
            "(instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, "
            " rail_type, payload) "
            "SELECT %s || n, 'k', gen_random_uuid(), %s, %s + n, 'RTP', "
            "       '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}' "
            "  FROM generate_series(1, %s) n",
            (prefix, f"ins-{run}", first, inserts))])
        return await _admin_script(dsn, [(
            "INSERT INTO symphony.payment_outbox_attempts "
            "(outbox_id, attempt_no, state, worker_id, lease_token) "
            "SELECT r.outbox_id, 1, 'DISPATCHING', 'bench', gen_random_uuid() "
            "  FROM symphony.payment_instruction_registry r "
            " WHERE r.participant_id = %s AND r.instruction_id LIKE %s",
            (f"ins-{run}", f"{prefix}%"))])

    cycle_no = iter(range(1_000_000))

    async def function_cycles(tag: str) -> float:
        cycle = next(cycle_no)
        for n in range(cycles):
            await store.enqueue(PaymentInstruction(
                instruction_id=f"{tag}-{run}-{cycle}-c{n}", idempotency_key="k",
                participant_id=f"ins-{run}", rail_type="RTP",
                payload={"amount": "1.00", "currency": "EUR", "destination": "d"}))
        started = time.perf_counter()
        done = 0
        while done < cycles and (claimed := await store.claim(f"bench-{tag}", 100, 60)):
            await store.complete_batch([Completion(c.outbox_id, c.lease_token,
                                                   Outcome.DISPATCHED,
                                                   rail_transaction_id=f"rtx-{c.outbox_id}")
                                        for c in claimed])
            done += len(claimed)
        return time.perf_counter() - started

    # Warm-up, then each measurement with the seal off and on, alternating.
    await raw_inserts("warm")
    results: dict[str, list[float]] = {"raw_off": [], "raw_on": [], "fn_off": [], "fn_on": []}
    for _ in range(2):
        await _admin_script(dsn, seal_off)
        results["raw_off"].append(await raw_inserts("off"))
        results["fn_off"].append(await function_cycles("off"))
        await _admin_script(dsn, seal_on)
        results["raw_on"].append(await raw_inserts("on"))
        results["fn_on"].append(await function_cycles("on"))
    best = {k: min(v) for k, v in results.items()}
    return {
        "inserts": inserts,
        "raw_insert_us_per_row_without_seal": round(best["raw_off"] / inserts * 1e6, 1),
        "raw_insert_us_per_row_with_seal": round(best["raw_on"] / inserts * 1e6, 1),
        "raw_insert_ratio": round(best["raw_on"] / best["raw_off"], 3),
        "cycles": cycles,
        "claim_complete_us_per_item_without_seal": round(best["fn_off"] / cycles * 1e6, 1),
        "claim_complete_us_per_item_with_seal": round(best["fn_on"] / cycles * 1e6, 1),
        "claim_complete_ratio": round(best["fn_on"] / best["fn_off"], 3),
        "note": "best of 2 runs each, seal off and on alternating (the cycle writes 2 ledger "
                "rows per item: DISPATCHING, DISPATCHED)",
    }


def _summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "median_ms": round(ordered[len(ordered) // 2], 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 2),
            "max_ms": round(ordered[-1], 2)}


async def checkpoint_contention(dsn: str, db: Database, batches: int) -> dict[str, Any]:
    """Claims and completions (batches of 10, through the real functions) on the big ledger:
    with nothing else running, while `take_ledger_checkpoint()` runs, and while a stand-in
    for the checkpoint of migration 0009 runs (a SHARE lock on the ledger held across the
    same two full scans), so the three compare within one run."""
    store = OutboxStore(db)
    run = uuid.uuid4().hex[:8]
    participant = f"cont-{run}"
    await AccessStore(db).add_participant(participant, "checkpoint contention bench")
    await store.enqueue_batch([PaymentInstruction(
        instruction_id=f"cont-{run}-{n}", idempotency_key="k", participant_id=participant,
        rail_type="RTP", payload={"amount": "1.00", "currency": "EUR", "destination": "d"})
        for n in range(batches * 10 * 3 + 100)])

    async def cycles(while_running: asyncio.Task[Any] | None) -> dict[str, Any]:
        claims: list[float] = []
        completes: list[float] = []
        started = time.perf_counter()
        for _ in range(batches):
            if while_running is not None and while_running.done():
                break
            t = time.perf_counter()
            claimed = await store.claim(f"cont-{run}", 10, 60)
            claims.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await store.complete_batch([Completion(c.outbox_id, c.lease_token,
                                                   Outcome.DISPATCHED,
                                                   rail_transaction_id=f"rtx-{c.outbox_id}")
                                        for c in claimed])
            completes.append((time.perf_counter() - t) * 1000)
        return {"claim": _summary(claims), "complete": _summary(completes),
                "seconds": round(time.perf_counter() - started, 2)}

    async def old_checkpoint() -> None:
        # What 0009's function held: the SHARE lock, across a count and a heads scan.
        await _admin_script(dsn, [
            ("LOCK TABLE symphony.payment_outbox_attempts IN SHARE MODE", None),
            ("SELECT count(*), max(attempt_id) FROM symphony.payment_outbox_attempts", None),
            ("SELECT count(*) FROM (SELECT DISTINCT ON (a.outbox_id) a.outbox_id, "
             "       a.attempt_no, a.row_digest FROM symphony.payment_outbox_attempts a "
             " ORDER BY a.outbox_id, a.attempt_no DESC) h", None)])

    result: dict[str, Any] = {"batches": batches, "batch_size": 10}
    result["alone"] = await cycles(None)
    audit = AuditStore(db)
    t0 = time.perf_counter()
    task = asyncio.create_task(audit.checkpoint())
    await asyncio.sleep(0.05)  # let the checkpoint start before the first claim
    result["during_checkpoint"] = await cycles(task)
    await task
    result["checkpoint_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    old = asyncio.create_task(old_checkpoint())
    await asyncio.sleep(0.05)
    result["during_0009_style_lock"] = await cycles(old)
    await old
    result["0009_style_seconds"] = round(time.perf_counter() - t0, 2)
    for key in ("during_checkpoint", "during_0009_style_lock"):
        for what in ("claim", "complete"):
            during, alone = result[key][what], result["alone"][what]
            if during.get("n") and alone.get("n"):
                result[key][what]["median_extra_ms"] = round(
                    during["median_ms"] - alone["median_ms"], 2)
                result[key][what]["max_extra_ms"] = round(
                    during["max_ms"] - alone["median_ms"], 2)
    return result


async def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="ledger rows to generate (about)")
    parser.add_argument("--recent", type=int, default=1000)
    parser.add_argument("--inserts", type=int, default=20000)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--contention-batches", type=int, default=300,
                        help="claim+complete batches of 10 timed alone, during a checkpoint "
                             "and during the old checkpoint's lock (0: skip)")
    parser.add_argument("--statement-timeout-ms", type=int, default=600_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, metavar="HOME",
                        help="keep the embedded server's data in HOME (not deleted; stop it "
                             "with SYMPHONY_HOME=HOME symphony db stop)")
    args = parser.parse_args(argv)

    server: EmbeddedServer | None = None
    extra = {"SYMPHONY_DB_STATEMENT_TIMEOUT_MS": args.statement_timeout_ms,
             "SYMPHONY_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": args.statement_timeout_ms}
    dropper: tuple[str, str] | None = None
    if os.environ.get("DATABASE_URL"):
        base = os.environ["DATABASE_URL"]
        name = f"symphony_audit_bench_{uuid.uuid4().hex[:8]}"
        await _admin(base, f'CREATE DATABASE "{name}"')
        dropper = (base, name)
        dsn = psycopg.conninfo.make_conninfo(base, dbname=name)
        settings = DatabaseSettings(DATABASE_URL=dsn, **extra)
        await bootstrap(settings)
    else:
        home = args.keep or Path(tempfile.mkdtemp(prefix="symphony-audit-bench-"))
        server = EmbeddedServer(home / "pgdata", delete_on_stop=args.keep is None)
        settings = DatabaseSettings(SYMPHONY_HOME=str(home), **extra)
        await bootstrap(settings, embedded=server)
    try:
        async with await Database.open(settings, embedded=server) as db:
            assert db.endpoint is not None
            dsn = db.endpoint.admin_dsn
            items = int(args.rows / 2.2)  # 2.2 rows per item on average (see the shapes)
            result: dict[str, Any] = {"server_version": db.endpoint.server_version,
                                      "generated": await generate(dsn, items)}
            await recent_items(db, args.recent)
            audit = AuditStore(db)
            t0 = time.perf_counter()
            cp = await audit.checkpoint()
            result["checkpoint_seconds"] = round(time.perf_counter() - t0, 2)
            result["checkpoint"] = {"row_count": cp.row_count, "item_count": cp.item_count}
            async with await Database.open_as(Principal.READER, settings) as reader:
                full = await AuditStore(reader).verify()
                since = datetime.now(UTC) - timedelta(hours=1)
                recent = await AuditStore(reader).verify(since=since)
            result["verify_full"] = {
                "ok": full.ok, "seconds": round(full.elapsed_seconds, 2), "counts": full.counts,
                "per_check_seconds": {k: round(v, 2) for k, v in full.timings.items()},
                "failed": [c.as_dict() for c in full.failed()],
            }
            result["verify_since_1h"] = {
                "ok": recent.ok, "seconds": round(recent.elapsed_seconds, 2),
                "counts": recent.counts,
                "per_check_seconds": {k: round(v, 2) for k, v in recent.timings.items()},
            }
            if args.contention_batches > 0:
                result["checkpoint_contention"] = await checkpoint_contention(
                    dsn, db, args.contention_batches)
            if args.inserts > 0:
                result["per_insert"] = await per_insert(dsn, db, args.inserts, args.cycles)
    finally:
        if server is not None and args.keep is None:
            server.stop()
        if dropper is not None:
            await _admin(dropper[0], f'DROP DATABASE IF EXISTS "{dropper[1]}" WITH (FORCE)')
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:])), indent=2, default=str))
