"""The limit: pgbench (shipped with the embedded server) on the same server, same run.

A "comparable row" is what one enqueue leaves behind in the hot queue: a uuid key, the
participant, an instruction id, a small JSON payload and a timestamp, with a primary key.
`insert` is one such row per transaction; `insert_delete` is the job-queue pair (insert in one
transaction, delete in the next: what enqueue + completion cost at the least), counted per pair.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import psycopg
from common import BenchServer

_TABLE = """
CREATE TABLE IF NOT EXISTS bench_rows (
    id             bigint      NOT NULL,
    participant_id text        NOT NULL,
    instruction_id text        NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT bench_rows_pkey PRIMARY KEY (id)
)
"""

_ROW = ("(:id, 'p' || :p, 'i-' || :id, "
        "'{\"amount\":\"10.00\",\"currency\":\"EUR\",\"destination\":\"acct-1\"}'::jsonb)")

SCRIPTS = {
    "insert": (
        "\\set id random(1, 9000000000000000)\n\\set p random(1, 100)\n"
        f"INSERT INTO bench_rows (id, participant_id, instruction_id, payload) VALUES {_ROW};\n"
    ),
    "insert_delete": (
        "\\set id random(1, 9000000000000000)\n\\set p random(1, 100)\n"
        f"INSERT INTO bench_rows (id, participant_id, instruction_id, payload) VALUES {_ROW};\n"
        "DELETE FROM bench_rows WHERE id = :id;\n"
    ),
}

_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def prepare(bench: BenchServer) -> str:
    dsn = bench.create_database("bench_pgbench")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_TABLE)
    return dsn


def run_pgbench(bench: BenchServer, script: str, clients: int, seconds: float) -> float:
    """Transactions (script runs) per second, as pgbench reports it."""
    params = bench.conn_params()
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(SCRIPTS[script])
        path = Path(f.name)
    try:
        out = subprocess.run(
            [str(bench.bin_dir / "pgbench"), "-n", "-M", "prepared", "-f", str(path),
             "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(max(1, round(seconds))),
             "-h", str(params["host"]), "-p", str(params.get("port", 5432)),
             "-U", str(params["user"]), "bench_pgbench"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
    finally:
        path.unlink(missing_ok=True)
    match = _TPS.search(out)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps: {out[-500:]}")
    return float(match.group(1))
