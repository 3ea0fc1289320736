"""Strict JSON (`symphony.strict_json`) and the places that read JSON from outside with it:
the rail's answers. (The API's bodies: tests/unit/test_api_edge_cases.py; `symphony enqueue
--payload`: tests/unit/test_cli.py.)"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from symphony import strict_json
from symphony.rails import DispatchOutcome, HttpRailClient, LookupStatus

REF = "7d4f1f5e-8a43-4c1e-9a51-0a3b5b1d2c10"
PAYLOAD = {"destination": "GB33BUKB20201555555555", "amount": "12.50", "currency": "GBP"}


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"a": 1, "\\u0061": 2}',  # the same name, escaped
        '{"x": {"a": 1, "a": 1}}',  # nested, even with equal values
        '[{"a": 1}, {"b": 1, "b": 2}]',
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": -Infinity}',
        '{"a": 1e999}',
        '{"a": "\\ud800"}',  # a lone surrogate
        '{"\\udc00": 1}',
        "[" * 40 + "]" * 40,
        "[" * 100_000 + "]" * 100_000,  # past Python's own recursion limit
        "{not json",
    ],
)
def test_ambiguous_or_unstorable_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        strict_json.loads(text)
    with pytest.raises(ValueError):
        strict_json.loads(text.encode("utf-8", "surrogatepass"))


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(ValueError):
        strict_json.loads(b'{"a": "\xff"}')


def test_ordinary_json_reads_as_json_loads_reads_it() -> None:
    text = '{"amount": "12.50", "n": [1, 2.5, true, null], "m": {"k": "\\u00e9"}}'
    assert strict_json.loads(text) == json.loads(text)
    assert strict_json.loads(text.encode()) == json.loads(text)


def _client(status: int, content: bytes) -> HttpRailClient:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content)

    return HttpRailClient("http://rail.test", transport=httpx.MockTransport(handler))


def _twice(first: dict[str, Any], member: str, value: Any) -> bytes:
    """`first` as JSON with `member` written a second time, last, with `value`."""
    body = json.dumps(first)
    return (body[:-1] + f", {json.dumps(member)}: {json.dumps(value)}}}").encode()


@pytest.mark.parametrize(
    "content",
    [
        # Refused, then "executed": a reader taking the last member would see a success.
        _twice({"reference": REF, "status": "REJECTED", "code": "INSUFFICIENT_FUNDS"},
               "status", "EXECUTED"),
        _twice({"reference": REF, "status": "EXECUTED", "rail_transaction_id": "rtx-1"},
               "rail_transaction_id", "rtx-2"),
        _twice({"reference": "another", "status": "EXECUTED", "rail_transaction_id": "rtx-1"},
               "reference", REF),
    ],
    ids=["status-twice", "transaction-id-twice", "reference-twice"],
)
async def test_a_rail_success_read_two_ways_confirms_nothing(content: bytes) -> None:
    async with _client(201, content) as client:
        result = await client.dispatch(REF, rail_type="RTP", payload=PAYLOAD, timeout=1)
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.rail_transaction_id is None
    async with _client(200, content) as client:
        lookup = await client.lookup(REF, timeout=1)
    assert lookup.status is LookupStatus.UNKNOWN


async def test_a_rail_refusal_whose_code_is_written_twice_is_not_terminal() -> None:
    # Terminal means "certainly not executed": an answer that reads two ways proves nothing.
    content = _twice({"code": "INSUFFICIENT_FUNDS"}, "code", "ACCOUNT_CLOSED")
    async with _client(422, content) as client:
        result = await client.dispatch(REF, rail_type="RTP", payload=PAYLOAD, timeout=1)
    assert result.outcome is DispatchOutcome.AMBIGUOUS
