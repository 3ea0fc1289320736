"""`symphony run` serves the HTTP API: it prints the API's URL, gives the demo participant a
fresh token at each start with a curl that really submits a payment, and revokes the tokens
it issued when it stops."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shlex
import shutil
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.database import DatabaseFactory

from symphony.db import Database, DatabaseSettings
from symphony.outbox.access import AccessStore
from symphony.services.system import RunOptions, SystemRunner
from symphony.services.system.runner import DEMO_PARTICIPANT, curl_example

_TOKEN = re.compile(r"sy_pt_[A-Za-z0-9_\-]+")
_OPERATOR_TOKEN = re.compile(r"sy_op_[A-Za-z0-9_\-]+")


@pytest.fixture
def own_settings(
    make_database: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> DatabaseSettings:
    for name in ("SYMPHONY_RAIL_URL", "ZOMBIE_THRESHOLD_SECONDS", "SYMPHONY_METRICS_PORT",
                 "SYMPHONY_API_PORT", "SYMPHONY_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    return make_database()


async def test_run_serves_the_api_and_a_demo_token_with_a_working_curl(
    own_settings: DatabaseSettings,
) -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    runner = SystemRunner(own_settings, RunOptions(), out=out, stop=stop)
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(30):
            while "Running." not in out.getvalue():
                assert not running.done(), out.getvalue()
                await asyncio.sleep(0.05)
        assert runner.api is not None
        url = runner.api.url
        assert f"  api        {url}  (docs {url}/docs, dashboard {url}/)" in out.getvalue()
        # What the embedded default does at every start (DATABASE_URL is set here): twice, as
        # on two starts, reusing the participant and issuing a new token each time.
        await runner._demo_participant(url)
        await runner._demo_participant(url)
        text = out.getvalue()
        tokens = _TOKEN.findall(text)
        assert len(set(tokens)) == 2, text
        assert "shown once" in text
        command = _last_curl(text)
        assert tokens[-1] in command

        if shutil.which("curl"):
            argv = shlex.split(command.replace("\\\n", " "))
            first = await asyncio.to_thread(subprocess.run, argv, capture_output=True,
                                            text=True, timeout=30, check=True)
            again = await asyncio.to_thread(subprocess.run, argv, capture_output=True,
                                            text=True, timeout=30, check=True)
            created = json.loads(first.stdout)
            assert created["amount"] == "12.50" and created["outbox_id"]
            assert again.stdout == first.stdout, "pasting it twice is the same payment"

        # The dashboard's operator token is printed with it, and the operator API accepts it.
        operator_tokens = _OPERATOR_TOKEN.findall(text)
        assert len(set(operator_tokens)) == 2, text
        async with httpx.AsyncClient(base_url=url) as client:
            status = await client.get(
                "/v1/ops/status", headers={"Authorization": f"Bearer {operator_tokens[-1]}"})
        assert status.status_code == 200 and "pending_total" in status.json()
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)

    async with await Database.open(own_settings) as db:
        access = AccessStore(db)
        for token in set(tokens) | set(operator_tokens):
            assert await access.authenticate(token) is None, "revoked when run stopped"
        participants = {p.participant_id for p in await access.list_participants()}
    assert DEMO_PARTICIPANT in participants


def test_the_curl_example_is_one_shell_command() -> None:
    command = curl_example("http://127.0.0.1:8080", "sy_pt_abc_def")
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:4] == ["curl", "-sS", "-X", "POST"]
    assert "Authorization: Bearer sy_pt_abc_def" in argv
    body = json.loads(argv[argv.index("-d") + 1])
    assert body["amount"] == "12.50" and set(body) == {
        "instruction_id", "rail_type", "amount", "currency", "destination"}
    key = next(a for a in argv if a.startswith("Idempotency-Key: "))
    assert key.split(": ", 1)[1] == body["instruction_id"]


def _last_curl(text: str) -> str:
    """The last curl command printed, with its continuation lines."""
    lines = text[text.rindex("  curl -sS"):].splitlines()
    taken = []
    for line in lines:
        taken.append(line)
        if not line.endswith("\\"):
            break
    return "\n".join(taken)


async def test_run_exports_its_workers_metrics_once_beside_the_databases(
    own_settings: DatabaseSettings,
) -> None:
    out = io.StringIO()
    stop = asyncio.Event()
    runner = SystemRunner(own_settings, RunOptions(), out=out, stop=stop)
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(30):
            while "Running." not in out.getvalue():
                assert not running.done(), out.getvalue()
                await asyncio.sleep(0.05)
        assert runner.api is not None and runner.worker is not None
        async with httpx.AsyncClient(base_url=runner.api.url, trust_env=False) as client:
            response = await client.get("/metrics")
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)

    assert response.status_code == 200
    text = response.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "symphony_outbox_up" in families
    assert families["symphony_outbox_up"].samples[0].value == 1.0
    # The worker that runs in this process: its histogram and counters, each exactly once.
    assert "symphony_worker_dispatch_seconds" in families
    assert "symphony_worker_items_dispatched" in families
    assert text.count("# TYPE symphony_worker_dispatch_seconds histogram") == 1
    assert text.count("# TYPE symphony_outbox_queue_items gauge") == 1
