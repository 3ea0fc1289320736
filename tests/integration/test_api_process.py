"""`symphony api` as a real process, given nothing but the API principal's DSN: it announces
its URL, serves a participant over HTTP, logs each request as a JSON line with its request id
(never the token or a payment value), and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from uuid import uuid4

import httpx
import psycopg
import pytest
from tests.support.api import new_member, payment_body
from tests.support.database import admin_dsn_of

from symphony.db import DSN_VARIABLE, Database, DatabaseSettings, Principal
from symphony.db.credential import CredentialStore
from symphony.db.dsn import parse_dsn, server_key

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"


def _principal_dsn(settings: DatabaseSettings, principal: Principal) -> str:
    admin = admin_dsn_of(settings)
    passwords = CredentialStore(settings.credentials_file).load(server_key(parse_dsn(admin, "x")))
    return psycopg.conninfo.make_conninfo(admin, user=principal.value,
                                          password=passwords[principal])


async def test_symphony_api_process_on_its_own_dsn(
    isolated_settings: DatabaseSettings, isolated_db: Database, tmp_path: Path
) -> None:
    member = await new_member(isolated_db, "process")
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and k not in DSN_VARIABLE.values()}
    home = tmp_path / "empty-home"
    home.mkdir()
    env.update({
        "SYMPHONY_API_DATABASE_URL": _principal_dsn(isolated_settings, Principal.API),
        "SYMPHONY_HOME": str(home),
        "SYMPHONY_LOG_FORMAT": "json",
        "SYMPHONY_ENV": "development",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    })
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symphony", "api", "--port", "0", "--json",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        announced = json.loads(line)
        url = announced["url"]
        assert url.startswith("http://127.0.0.1:") and announced["docs"] == f"{url}/docs"
        async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
            created = await client.post(
                "/v1/payments", content=json.dumps(payment_body(destination="ACCT-SECRET-9")),
                headers={**member.headers(f"k-{uuid4()}"), "Content-Type": "application/json"})
            assert created.status_code == 201, created.text
            request_id = created.headers["x-request-id"]
            outbox_id = created.json()["outbox_id"]
            got = await client.get(f"/v1/payments/{outbox_id}", headers=member.headers())
            assert got.status_code == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    logs = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    mine = [entry for entry in logs if entry.get("request_id") == request_id]
    assert mine, logs
    assert mine[0]["participant_id"] == member.participant_id
    assert mine[0]["outbox_id"] == outbox_id
    text = stderr.decode()
    assert member.token not in text and member.token.split("_")[2] not in text
    assert "ACCT-SECRET-9" not in text and "12.50" not in text
    assert list(home.iterdir()) == []
