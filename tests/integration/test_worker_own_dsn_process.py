"""The real `symphony worker --once` runs from its own principal's DSN and nothing else.

The process gets only `SYMPHONY_EXECUTOR_DATABASE_URL`, `SYMPHONY_ENV` and a `SYMPHONY_HOME`
with no credentials file in it: no `DATABASE_URL`, no inherited environment. It dispatches an
item against the rail simulator, the ledger says the executor principal wrote it, and its log
(JSON lines: stderr is not a terminal) holds no password.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.support.database import admin_dsn_of
from tests.support.outbox import instruction

from symphony.db import Database, DatabaseSettings, Principal, test_only
from symphony.db.credential import CredentialStore
from symphony.db.dsn import parse_dsn, server_key
from symphony.outbox import OutboxStore
from symphony.services.rail_sim import RailSimConfig, RailSimServer

pytestmark = pytest.mark.integration


def _executor_dsn(settings: DatabaseSettings) -> tuple[str, str]:
    admin = admin_dsn_of(settings)
    password = CredentialStore(settings.credentials_file).load(
        server_key(parse_dsn(admin, "x")))[Principal.EXECUTOR]
    dsn = psycopg.conninfo.make_conninfo(
        admin, user=Principal.EXECUTOR.value, password=password)
    return dsn, password


async def test_worker_once_with_only_its_own_dsn_dispatches(
    make_database: Any, tmp_path: Path
) -> None:
    settings: DatabaseSettings = make_database()
    admin = admin_dsn_of(settings)
    dsn, password = _executor_dsn(settings)
    home = tmp_path / "worker-home"
    home.mkdir()
    sim = RailSimServer(RailSimConfig(port=0))
    await sim.start()
    try:
        async with await Database.open(settings) as db:
            item = await OutboxStore(db).enqueue(instruction())
        env = {
            "SYMPHONY_EXECUTOR_DATABASE_URL": dsn,
            "SYMPHONY_ENV": "production",
            "SYMPHONY_HOME": str(home),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "symphony", "worker", "--once", "--json",
            "--rail-url", sim.url, "--worker-id", "own-dsn-worker",
            env=env, cwd=str(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await sim.stop()

    log = err.decode()
    assert process.returncode == 0, log
    cycle = json.loads(out)
    assert (cycle["claimed"], cycle["dispatched"]) == (1, 1)

    rows = await test_only.query_no_role(
        admin, "SELECT state::text AS state, recorded_by FROM symphony.payment_outbox_attempts"
               " WHERE outbox_id = %s ORDER BY attempt_no", (item.outbox_id,))
    assert rows == [
        {"state": "DISPATCHING", "recorded_by": Principal.EXECUTOR.value},
        {"state": "DISPATCHED", "recorded_by": Principal.EXECUTOR.value},
    ]
    assert list(home.iterdir()) == [], "no credentials file was read or written"
    assert not (tmp_path / ".symphony").exists(), "no embedded server was started"

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any("symphony_executor_svc" in line["message"] for line in lines)
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert password not in log
