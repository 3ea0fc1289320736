"""Slow and stalling clients against a real `symphony api` process (loopback only).

What a client may hold of the API is bounded before and while the application runs: a body
is read only after authentication and under a deadline (408, connection closed), a request
head under its own deadline (connection closed), and the connections served at once below the
process's file-descriptor limit. So with hundreds of stalled bodies open, `/healthz` and a
valid POST still answer at once, and every stalled connection is cut off within the
documented limit.

Timing bounds, and why they are generous but meaningful: the issue asks for an answer within
1 s under attack; this machine class (2 shared cores, a busy CI) measures ~10-50 ms, and the
tests allow `ANSWER_BOUND` (2 s). That is still well under the 4 s body deadline, so an answer
that had to wait for the stalled connections to be shed would fail. A cut-off is expected at
its deadline and allowed `CUT_OFF_SLACK` after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import httpx
import psycopg
import pytest
from tests.support.api import Member, new_member, payment_body
from tests.support.database import admin_dsn_of

from symphony.db import DSN_VARIABLE, Database, DatabaseSettings, Principal
from symphony.db.credential import CredentialStore
from symphony.db.dsn import parse_dsn, server_key

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[2] / "src"
BODY_TIMEOUT = 4.0
HEADER_TIMEOUT = 4.0
ANSWER_BOUND = 2.0
# Once accept() has failed for want of descriptors, asyncio tries again a second later
# (asyncio.constants.ACCEPT_RETRY_DELAY): a connection in the listen queue then waits that
# second, however fast the server answers (measured here: 0.8-1.0 s).
FD_ANSWER_BOUND = ANSWER_BOUND + 1.0
CUT_OFF_SLACK = 3.0


def _principal_dsn(settings: DatabaseSettings, principal: Principal) -> str:
    admin = admin_dsn_of(settings)
    passwords = CredentialStore(settings.credentials_file).load(server_key(parse_dsn(admin, "x")))
    return psycopg.conninfo.make_conninfo(admin, user=principal.value,
                                          password=passwords[principal])


@asynccontextmanager
async def api_process(
    settings: DatabaseSettings, home: Path, *, preexec_fn: Callable[[], None] | None = None,
    **extra: str,
) -> AsyncIterator[tuple[str, list[str]]]:
    """`symphony api` on a free loopback port: its URL and its stderr lines (read as they
    come, so a chatty log can never block it)."""
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and k not in DSN_VARIABLE.values()}
    env.update({
        "SYMPHONY_API_DATABASE_URL": _principal_dsn(settings, Principal.API),
        "SYMPHONY_HOME": str(home),
        "SYMPHONY_LOG_FORMAT": "json",
        "SYMPHONY_LOG_LEVEL": "WARNING",
        "SYMPHONY_ENV": "development",
        "SYMPHONY_API_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "SYMPHONY_API_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        **extra,
    })
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symphony", "api", "--port", "0", "--json",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, preexec_fn=preexec_fn,
    )
    lines: list[str] = []

    async def collect() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            lines.append(line.decode(errors="replace"))

    collector = asyncio.create_task(collect())
    try:
        assert process.stdout is not None
        announced = await asyncio.wait_for(process.stdout.readline(), 30)
        assert announced, "".join(lines)
        yield json.loads(announced)["url"], lines
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.wait_for(collector, 15)


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _post_head(member: Member | None, length: int) -> bytes:
    auth = f"Authorization: Bearer {member.token}\r\n" if member is not None else ""
    return (f"POST /v1/payments HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: k-{uuid4()}\r\n{auth}Content-Length: {length}\r\n\r\n").encode()


class Stalled:
    """One connection that sent `sent` and then nothing more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.opened = time.monotonic()

    @classmethod
    async def open(cls, url: str, sent: bytes) -> Stalled:
        reader, writer = await asyncio.open_connection(*_address(url))
        writer.write(sent)
        await writer.drain()
        return cls(reader, writer)

    async def outcome(self, limit: float) -> tuple[bytes, float]:
        """Everything the server sent until it closed, and when it closed (seconds after the
        connection opened); `limit` seconds of silence fail the test."""
        received = await asyncio.wait_for(self.reader.read(), limit)
        return received, time.monotonic() - self.opened

    def close(self) -> None:
        self.writer.close()


async def _timed(call: Callable[[], object]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call()  # type: ignore[misc]
    return response, time.monotonic() - started


async def test_stalled_bodies_do_not_hold_the_api_and_are_cut_off(
    isolated_settings: DatabaseSettings, isolated_db: Database, tmp_path: Path
) -> None:
    member = await new_member(isolated_db, "slow")
    valid = await new_member(isolated_db, "valid")
    body = json.dumps(payment_body()).encode()
    async with api_process(isolated_settings, tmp_path) as (url, log):
        # 200 authenticated bodies that stall after 10 bytes: they are the API's to wait for,
        # up to the body deadline.
        stalled = [await Stalled.open(url, _post_head(member, len(body)) + body[:10])
                   for _ in range(200)]
        # 50 without a token: answered 401 at once, their bodies never awaited.
        anonymous = [await Stalled.open(url, _post_head(None, len(body)) + body[:10])
                     for _ in range(50)]
        # 20 that never finish their request head.
        headless = [await Stalled.open(url, b"POST /v1/payments HTTP/1.1\r\nHost: api\r\n")
                    for _ in range(20)]

        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as client:
            healthz, healthz_took = await _timed(lambda: client.get("/healthz"))
            created, created_took = await _timed(lambda: client.post(
                "/v1/payments", content=json.dumps(payment_body()),
                headers={**valid.headers(f"k-{uuid4()}"), "Content-Type": "application/json"}))
        assert healthz.status_code == 200, healthz.text
        assert created.status_code == 201, created.text
        assert healthz_took < ANSWER_BOUND and created_took < ANSWER_BOUND, (
            healthz_took, created_took)
        print(f"under 270 stalled connections: /healthz {healthz_took * 1000:.0f} ms, "
              f"POST {created_took * 1000:.0f} ms")

        for connection in anonymous:
            answer, _ = await connection.outcome(ANSWER_BOUND)
            assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]
            assert b"connection: close" in answer.lower()
        for connection in stalled:
            answer, took = await connection.outcome(BODY_TIMEOUT + CUT_OFF_SLACK)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            assert b'"code":"request_body_timeout"' in answer
            assert b"connection: close" in answer.lower()
            assert took < BODY_TIMEOUT + CUT_OFF_SLACK
        for connection in headless:
            answer, took = await connection.outcome(HEADER_TIMEOUT + CUT_OFF_SLACK)
            assert answer == b""  # no request, no answer: closed
            assert took < HEADER_TIMEOUT + CUT_OFF_SLACK
        for connection in (*stalled, *anonymous, *headless):
            connection.close()
    assert not [line for line in log if "Traceback" in line], log


async def _dribble(url: str, head: bytes, rest: bytes, every: float) -> tuple[bytes, float]:
    """Send `head`, then `rest` a byte every `every` seconds until the server closes."""
    reader, writer = await asyncio.open_connection(*_address(url))
    opened = time.monotonic()
    writer.write(head)
    await writer.drain()

    async def trickle() -> None:
        for i in range(len(rest)):
            await asyncio.sleep(every)
            if writer.is_closing():
                return
            writer.write(rest[i:i + 1])
            try:
                await writer.drain()
            except ConnectionError:
                return

    trickler = asyncio.create_task(trickle())
    try:
        received = await asyncio.wait_for(reader.read(), BODY_TIMEOUT + CUT_OFF_SLACK + 5)
        return received, time.monotonic() - opened
    finally:
        trickler.cancel()
        writer.close()


async def test_a_dribbled_body_or_head_is_cut_off_at_its_deadline(
    isolated_settings: DatabaseSettings, isolated_db: Database, tmp_path: Path
) -> None:
    member = await new_member(isolated_db, "dribble")
    body = json.dumps(payment_body()).encode()
    async with api_process(isolated_settings, tmp_path) as (url, _):
        # A byte every 50 ms keeps data flowing the whole time: only a deadline on the whole
        # body (not on silence) cuts it off.
        answer, took = await _dribble(url, _post_head(member, len(body)), body, 0.05)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + CUT_OFF_SLACK, took
        print(f"dribbled body cut off after {took:.2f} s (deadline {BODY_TIMEOUT} s)")
        head = _post_head(member, len(body))
        answer, took = await _dribble(url, b"", head, 0.05)
        assert answer == b"", answer[:100]
        assert HEADER_TIMEOUT - 0.5 < took < HEADER_TIMEOUT + CUT_OFF_SLACK, took
        print(f"dribbled head cut off after {took:.2f} s (deadline {HEADER_TIMEOUT} s)")


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


@pytest.mark.parametrize("with_token", [False, True], ids=["anonymous", "authenticated"])
async def test_at_the_descriptor_limit_health_checks_are_answered_not_starved(
    isolated_settings: DatabaseSettings, isolated_db: Database, tmp_path: Path,
    with_token: bool,
) -> None:
    """`ulimit -n 128` and 130 stalled bodies (the issue's case had no token: those are
    answered 401 at once; with a token they are waited for until their deadline): the API
    serves at most 128 - 64 connections at once, answers the rest at once (never leaving them
    in the backlog behind the stalled ones), and is whole again once the stalled are cut
    off."""
    member = await new_member(isolated_db, "fd")
    valid = await new_member(isolated_db, "fd-valid")
    body = json.dumps(payment_body()).encode()
    async with api_process(isolated_settings, tmp_path, preexec_fn=_limit_descriptors) as (
        url, log,
    ):
        stalled = [await Stalled.open(
            url, _post_head(member if with_token else None, len(body)) + body[:10])
            for _ in range(130)]
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as client:
            started = time.monotonic()
            during, took = await _timed(lambda: client.get("/healthz"))
            assert during.status_code in (200, 503), during.text
            print(f"at the descriptor limit: /healthz {during.status_code} in {took * 1000:.0f} ms")
            assert took < FD_ANSWER_BOUND, (took, log)
            # Answered 503 at once while at the limit, then 200 once the stalled bodies were
            # cut off at their deadline.
            while (health := await client.get("/healthz")).status_code != 200:
                assert time.monotonic() - started < BODY_TIMEOUT + CUT_OFF_SLACK, health.text
                await asyncio.sleep(0.1)
            created = await client.post(
                "/v1/payments", content=json.dumps(payment_body()),
                headers={**valid.headers(f"k-{uuid4()}"), "Content-Type": "application/json"})
            assert created.status_code == 201, created.text
        statuses = []
        for connection in stalled:
            answer, _ = await connection.outcome(BODY_TIMEOUT + CUT_OFF_SLACK)
            statuses.append(answer[:12])
            connection.close()
        refused = b"HTTP/1.1 408" if with_token else b"HTTP/1.1 401"
        assert set(statuses) <= {refused, b"HTTP/1.1 503"}, set(statuses)
        assert refused in statuses
    assert any("serves at most 64 connections" in line for line in log), log
