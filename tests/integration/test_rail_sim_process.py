"""The rail simulator as a separate process: announce URL on stdout, serve, exit cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from symphony.rails import DispatchOutcome, HttpRailClient, LookupStatus

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"
ANNOUNCEMENT = re.compile(r"rail-sim listening on (http://127\.0\.0\.1:(\d+))")
START_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0

Launcher = Callable[..., Coroutine[Any, Any, asyncio.subprocess.Process]]


@pytest.fixture
async def launch() -> AsyncIterator[Launcher]:
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "symphony.services.rail_sim",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_url(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
    match = ANNOUNCEMENT.fullmatch(line.decode().strip())
    assert match is not None, f"unexpected first line: {line!r}"
    assert int(match.group(2)) > 0
    return match.group(1)


async def terminate(process: asyncio.subprocess.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), EXIT_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_process_announces_url_serves_dispatch_and_exits_cleanly_on_sigterm(
    launch: Launcher,
) -> None:
    process = await launch("--port", "0", "--seed", "1")
    url = await read_url(process)

    async with HttpRailClient(url) as client:
        result = await client.dispatch(
            "proc-ref-1", rail_type="sepa", payload={"destination": "DE-1"}, timeout=5
        )
        lookup = await client.lookup("proc-ref-1", timeout=5)
    async with httpx.AsyncClient(base_url=url) as admin:
        stats = (await admin.get("/v1/stats")).json()
    returncode, stderr = await terminate(process)

    assert result.outcome is DispatchOutcome.SUCCESS
    assert lookup.status is LookupStatus.EXECUTED
    assert lookup.rail_transaction_id == result.rail_transaction_id
    assert stats["executions"] == {"proc-ref-1": 1}
    assert returncode == 0
    assert "Traceback" not in stderr


async def test_process_exits_promptly_on_sigterm_with_a_hang_in_flight(launch: Launcher) -> None:
    process = await launch("--port", "0", "--hang-seconds", "60")
    url = await read_url(process)
    async with HttpRailClient(url) as client:
        hung = await client.dispatch(
            "proc-ref-2", rail_type="sepa", payload={"destination": "HANG:1"}, timeout=0.2
        )

    started = time.monotonic()
    returncode, stderr = await terminate(process)

    assert hung.outcome is DispatchOutcome.AMBIGUOUS
    assert returncode == 0
    assert time.monotonic() - started < 5
    assert "Traceback" not in stderr


async def test_process_rejects_invalid_behaviour_arguments(launch: Launcher) -> None:
    process = await launch("--port", "0", "--retryable-rate", "1.5")
    _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)

    assert process.returncode == 2
    assert "retryable_failure_rate" in stderr.decode()
