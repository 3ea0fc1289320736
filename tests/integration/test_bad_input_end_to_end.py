"""Bad input end to end: over HTTP (a real API server) and through `symphony enqueue`.

Quotes, NULs, control and bidirectional characters, bytes that are not UTF-8, megabyte strings,
deeply nested and huge JSON, amounts as JSON numbers, negative, zero, in exponent form, with
too many decimals or absurdly large, the classic SQL-injection strings in every field, and an
Idempotency-Key that tries to smuggle a header. Each is refused with a clear status and code
and writes nothing (every table's row count unchanged), or — free text only, where the
characters are legal — is stored verbatim as data and read back byte for byte. The server is
healthy afterwards: /healthz answers and a valid request still works.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from tests.support.api import Member, new_member, payment_body, row_counts, serve
from tests.support.outbox import TEST_PARTICIPANTS
from tests.support.processes import REPO, service_env

from symphony.db import Database, test_only

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}

SQL_INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE symphony.payment_outbox_attempts; --",
    "\"; DELETE FROM symphony.payment_outbox_pending; --",
    "1; UPDATE symphony.outbox_retry_policy SET max_attempts = 1000",
    "' UNION SELECT lease_token FROM symphony.payment_outbox_pending --",
    "$$; SELECT pg_sleep(10); $$",
    "%(participant_id)s",
    "\\'; GRANT symphony_owner TO symphony_api_svc; --",
]

# Fields with a strict format: an injection string is never a valid value.
STRICT_FIELDS = ("instruction_id", "rail_type", "amount", "currency")

AMOUNTS_REFUSED: list[Any] = [
    12.5, 12, 0, -1, 1e2,  # JSON numbers (never: readers turn them into binary floats)
    "0", "0.00", "-1.00", "-0.01", "1e2", "1E2", "1.5e-1", "12.505", "1.123456789",
    "1" * 16, "9" * 40, "99999999999999999999.99", "NaN", "Infinity", "", " 12.50", "12.50 ",
    "12,50", "+12.50", "0x10", "\u0661\u0662", "\uff11\uff12", "12.", ".5", "1_000",
]


def _key() -> str:
    return f"key-{uuid4()}"


async def _check_refused(response: Any, status: int | tuple[int, ...]) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body.get("code"), str) and body["code"], body
    assert body.get("request_id") == response.headers.get("x-request-id"), body
    return body


async def _raw_request(url: str, request: bytes) -> bytes:
    """Send bytes no HTTP client would send (a header with CR LF in it) and read the answer."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def test_bad_input_over_http_is_refused_and_writes_nothing(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    member: Member = await new_member(isolated_db, "bad-input")
    async with serve(isolated_db) as api:
        async def post(body: Any, *, raw: bytes | None = None, key: str | None = None,
                       headers: dict[str, str] | None = None) -> Any:
            content = raw if raw is not None else json.dumps(body).encode()
            return await api.client.post(
                "/v1/payments", content=content,
                headers={**member.headers(key or _key()), **JSON, **(headers or {})})

        before = await row_counts(isolated_admin_dsn)
        refused: dict[str, int] = {}

        async def expect(name: str, response: Any, status: int | tuple[int, ...]) -> None:
            try:
                await _check_refused(response, status)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None
            refused[name] = response.status_code

        # Quotes, NULs, control and bidi characters, where they are not allowed.
        await expect("quote in instruction_id", await post(payment_body(instruction_id="a'b")),
                     422)
        await expect("NUL in destination", await post(payment_body(destination="a\u0000b")), 422)
        await expect("NUL in instruction_id", await post(payment_body(instruction_id="a\u0000")),
                     422)
        for ch in ("\u0007", "\u001b[31m", "\u0085", "\u202e", "\u2066", "\r\n"):
            await expect(f"control {ch!r} in destination",
                         await post(payment_body(destination=f"acct{ch}1")), 422)
        await expect("control in metadata key",
                     await post(payment_body(metadata={"a\u0000": "x"})), 422)
        # Bytes that are not UTF-8, and JSON that is not JSON.
        valid = json.dumps(payment_body()).encode()
        assert b"DE89" in valid
        await expect("latin-1 bytes", await post(None, raw=valid.replace(b"DE89", b"\xe9\xff")),
                     400)
        await expect("lone surrogate escape", await post(None, raw=valid.replace(
            b'"SEPA_CT"', b'"\\ud800"')), (400, 422))
        await expect("truncated JSON", await post(None, raw=valid[:-5]), 400)
        # Megabyte strings and huge or deep JSON.
        await expect("1 MB destination", await post(payment_body(destination="x" * 1_000_000)),
                     413)
        await expect("1 MB instruction_id",
                     await post(payment_body(instruction_id="i" * 1_000_000)), 413)
        await expect("huge metadata", await post(payment_body(
            metadata={f"k{i}": "v" * 400 for i in range(2000)})), 413)
        await expect("deeply nested metadata",
                     await post(None, raw=b'{"metadata":' + b'{"d":' * 5000 + b'1' + b"}" * 5000
                                + b"}"), (400, 413, 422))
        await expect("nested 40 levels", await post(payment_body(
            metadata=_nest(40))), (400, 422))
        # Amounts.
        for amount in AMOUNTS_REFUSED:
            await expect(f"amount {amount!r}", await post(payment_body(amount=amount)), 422)
        await expect("JPY with decimals",
                     await post(payment_body(amount="1.5", currency="JPY")), 422)
        # SQL injection in every field: refused where the format is strict.
        for text in SQL_INJECTIONS:
            for field in STRICT_FIELDS:
                await expect(f"injection in {field}", await post(payment_body(**{field: text})),
                             422)
            for hostile_key in (text, f"k-{text}"):
                # Outside printable ASCII without separators: refused before any SQL.
                if all(0x21 <= ord(c) <= 0x7E and c not in ' ",\\' for c in hostile_key):
                    continue
                await expect("injection in Idempotency-Key",
                             await post(payment_body(), key=hostile_key.encode(  # type: ignore[arg-type]
                                 "utf-8", "surrogateescape")), 400)
        assert await row_counts(isolated_admin_dsn) == before, "a refused request wrote"

        # Free text may hold these characters: stored verbatim as data, nothing else touched.
        for text in SQL_INJECTIONS[:3]:
            created = await post(payment_body(destination=text, metadata={"note": text}))
            assert created.status_code == 201, created.text
            read = await api.client.get(created.json()["links"]["self"],
                                        headers=member.headers())
            assert read.json()["destination"] == text
            assert read.json()["metadata"] == {"note": text}
        after = await row_counts(isolated_admin_dsn)
        assert after["payment_instruction_registry"] == before["payment_instruction_registry"] + 3
        assert after["payment_outbox_attempts"] == before["payment_outbox_attempts"]

        # A header-smuggling Idempotency-Key, sent as raw bytes no client library would send.
        # HTTP/1.1 itself ends a header at CR LF: what follows is another header (or, after an
        # empty line, another request), never part of the key. Whatever the server makes of
        # it, no key with a control character reaches the database, and nothing fails.
        body = json.dumps(payment_body()).encode()
        for smuggled in (b"k-1\r\nX-Injected: 1", b"k-1\r\n\r\nGET /healthz HTTP/1.1",
                         b"k-1\nX-Injected: 1", b"k-1\x00", b"k-1\r\n folded", b"k-1\rX: 1"):
            answer = await _raw_request(api.url, (
                b"POST /v1/payments HTTP/1.1\r\nHost: test\r\n"
                + f"Authorization: Bearer {member.token}\r\n".encode()
                + b"Content-Type: application/json\r\nIdempotency-Key: " + smuggled + b"\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body))
            status = int(answer.split(b"\r\n", 1)[0].split()[1])
            assert status in (200, 201, 400, 415, 422), (smuggled, answer[:300])
            refused[f"smuggled {smuggled!r}"] = status
        keys = await test_only.query_no_role(
            isolated_admin_dsn, "SELECT idempotency_key FROM symphony.payment_instruction_registry"
                                " WHERE idempotency_key !~ '^[!-~]+$'")
        assert keys == [], "a key with a control character or a space was stored"
        smuggled_rows = await row_counts(isolated_admin_dsn)
        assert smuggled_rows["payment_instruction_registry"] <= after[
            "payment_instruction_registry"] + 1, "at most the one plain k-1 request was stored"
        assert smuggled_rows["payment_outbox_attempts"] == after["payment_outbox_attempts"]

        # Healthy afterwards.
        assert (await api.client.get("/healthz")).status_code == 200
        ok = await post(payment_body())
        assert ok.status_code == 201, ok.text
        print(f"\nbad input over HTTP: {len(refused)} kinds refused, each with a code")


def _nest(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"d": value}
    return value


CLI_CASES: list[tuple[str, list[str], str]] = [
    ("injection in instruction id", ["--instruction-id", "x'; DROP TABLE x; --"],
     "INVALID_INSTRUCTION_ID"),
    ("injection in rail", ["--rail", "SEPA_CT'; --"], "UNKNOWN_RAIL_TYPE"),
    ("injection in currency", ["--currency", "EU'R"], "INVALID_CURRENCY"),
    ("exponent amount", ["--amount", "1e5"], "INVALID_AMOUNT"),
    ("negative amount", ["--amount", "-5.00"], "INVALID_AMOUNT"),
    ("too many decimals", ["--amount", "1.001"], "INVALID_AMOUNT"),
    ("absurd amount", ["--amount", "9" * 40], "INVALID_AMOUNT"),
    ("control characters", ["--destination", "acct\x1b[31m"], "INVALID_DESTINATION"),
    ("100 kB destination", ["--destination", "x" * 100_000], "PAYLOAD_TOO_LARGE"),
    ("non-UTF-8 bytes", ["--destination", "acct-\udcff"], "INVALID_TEXT_ENCODING"),
    ("JSON number amount",
     ["--payload", '{"amount": 12.5, "currency": "EUR", "destination": "a"}'], "INVALID_AMOUNT"),
    ("deep payload",
     ["--payload", '{"amount": "1.00", "currency": "EUR", "destination": "a", "m": '
      + '{"d":' * 200 + "1" + "}" * 200 + "}"], "PAYLOAD_TOO_COMPLEX"),
    ("key with a newline", ["--idempotency-key", "k-1\nX-Injected: 1"],
     "INVALID_IDEMPOTENCY_KEY"),
    ("key not ASCII", ["--idempotency-key", "\u043a\u043b\u044e\u0447"],
     "INVALID_IDEMPOTENCY_KEY"),
]


async def _cli(env: dict[str, str], args: list[str]) -> tuple[int, str]:
    base = {"--instruction-id": f"cli-{uuid4().hex[:12]}", "--idempotency-key": _key(),
            "--participant": TEST_PARTICIPANTS[1], "--rail": "SEPA_CT", "--amount": "10.00",
            "--currency": "EUR", "--destination": "acct-cli"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    if "--payload" in given:
        for name in ("--amount", "--currency", "--destination"):
            base.pop(name)
    base.update(given)
    argv = [a for pair in base.items() for a in pair]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "symphony", "enqueue", *[
            a.encode("utf-8", "surrogateescape") for a in argv],
        env=env, cwd=str(REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, (out + err).decode(errors="replace")


async def test_bad_input_through_the_cli_is_refused_and_writes_nothing(
    isolated_admin_dsn: str, symphony_home: Path
) -> None:
    env = service_env(isolated_admin_dsn, symphony_home, 120)
    before = await row_counts(isolated_admin_dsn)
    semaphore = asyncio.Semaphore(4)

    async def one(case: tuple[str, list[str], str]) -> tuple[str, int, str, str]:
        async with semaphore:
            code, output = await _cli(env, case[1])
        return case[0], code, case[2], output

    results = await asyncio.gather(*(one(c) for c in CLI_CASES))
    for name, exit_code, expected, output in results:
        assert exit_code in (1, 2), (name, exit_code, output[-500:])
        assert f"[{expected}]" in output or f'"{expected}"' in output, (name, output[-500:])
    assert await row_counts(isolated_admin_dsn) == before
    ok_code, ok_output = await _cli(env, [])
    assert ok_code == 0, ok_output
