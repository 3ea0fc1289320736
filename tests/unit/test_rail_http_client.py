"""HTTP rail client: outcome classification, and end-to-end behaviour against the simulator.

Status-code and transport-error cases use ``httpx.MockTransport``; timeouts,
hangs, lookups and concurrency use a real simulator on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from decimal import Decimal
from typing import Any

import httpx
import pytest

from symphony.rails import (
    MAX_DETAIL_LENGTH,
    DispatchOutcome,
    DispatchResult,
    HttpRailClient,
    LookupResult,
    LookupStatus,
    RailClient,
)
from symphony.rails.http import MAX_RESPONSE_BYTES
from symphony.services.rail_sim import (
    HangMode,
    RailSimBehaviour,
    RailSimConfig,
    RailSimServer,
)

REF = "7d4f1f5e-8a43-4c1e-9a51-0a3b5b1d2c10"
PAYLOAD = {"destination": "GB33BUKB20201555555555", "amount_minor": 1250, "currency": "GBP"}

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


def mock_client(handler: Handler) -> HttpRailClient:
    return HttpRailClient("http://rail.test", transport=httpx.MockTransport(handler))


def answering(status: int, body: Any = None, *, content: bytes | None = None) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content)
        if body is None:
            return httpx.Response(status)
        return httpx.Response(status, json=body)

    return handler


def raising(exc_type: type[httpx.RequestError]) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return handler


async def dispatch_with(handler: Handler, reference: str = REF) -> DispatchResult:
    async with mock_client(handler) as client:
        return await client.dispatch(
            reference, rail_type="faster_payments", payload=PAYLOAD, timeout=1
        )


async def lookup_with(handler: Handler, reference: str = REF) -> LookupResult:
    async with mock_client(handler) as client:
        return await client.lookup(reference, timeout=1)


def executed(reference: str = REF, **extra: Any) -> dict[str, Any]:
    return {"reference": reference, "status": "EXECUTED", "rail_transaction_id": "rtx-1", **extra}


# --- contract and request shape -------------------------------------------------------


async def test_client_satisfies_rail_client_protocol_and_supports_lookup() -> None:
    client: RailClient = HttpRailClient("http://rail.test")
    try:
        assert client.supports_lookup is True
    finally:
        await client.aclose()


async def test_dispatch_posts_reference_as_idempotency_key_and_json_body() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=executed())

    await dispatch_with(handler)

    (request,) = seen
    assert request.method == "POST"
    assert request.url == "http://rail.test/v1/payments"
    assert request.headers["Idempotency-Key"] == REF
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "reference": REF,
        "rail_type": "faster_payments",
        "payload": PAYLOAD,
    }


async def test_base_url_path_prefix_is_kept() -> None:
    seen: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=executed())

    async with HttpRailClient(
        "http://rail.test/gateway/", transport=httpx.MockTransport(handler)
    ) as client:
        await client.dispatch(REF, rail_type="ach", payload={}, timeout=1)
        await client.lookup(REF, timeout=1)

    assert seen == [
        "http://rail.test/gateway/v1/payments",
        f"http://rail.test/gateway/v1/payments/{REF}",
    ]


@pytest.mark.parametrize(
    "reference", ["", "x" * 201, "a/b", "a b", "ref?x=1", "caf\u00e9", ".", ".."]
)
async def test_invalid_reference_raises_value_error_without_sending(reference: str) -> None:
    sent: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json=executed(reference))

    async with mock_client(handler) as client:
        with pytest.raises(ValueError):
            await client.dispatch(reference, rail_type="ach", payload={}, timeout=1)
        with pytest.raises(ValueError):
            await client.lookup(reference, timeout=1)
    assert sent == []


async def test_reference_of_200_url_safe_characters_is_accepted() -> None:
    reference = "A-z_0.9~" * 25
    result = await dispatch_with(answering(201, executed(reference)), reference=reference)
    assert result.outcome is DispatchOutcome.SUCCESS


@pytest.mark.parametrize("bad_timeout", [0, -1, math.inf, math.nan])
async def test_non_positive_or_non_finite_timeout_raises_value_error(bad_timeout: float) -> None:
    async with mock_client(answering(201, executed())) as client:
        with pytest.raises(ValueError):
            await client.dispatch(REF, rail_type="ach", payload={}, timeout=bad_timeout)
        with pytest.raises(ValueError):
            await client.lookup(REF, timeout=bad_timeout)


@pytest.mark.parametrize("payload", [{"amount": Decimal("1.10")}, {"amount": math.nan}])
async def test_unserialisable_payload_is_terminal_invalid_payload_and_not_sent(
    payload: dict[str, Any],
) -> None:
    sent: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json=executed())

    async with mock_client(handler) as client:
        result = await client.dispatch(REF, rail_type="ach", payload=payload, timeout=1)

    assert result.outcome is DispatchOutcome.TERMINAL
    assert result.code == "INVALID_PAYLOAD"
    assert sent == []


async def test_aclose_is_idempotent() -> None:
    client = HttpRailClient("http://rail.test")
    await client.aclose()
    await client.aclose()


# --- dispatch classification by status ----------------------------------------------


@pytest.mark.parametrize("status", [200, 201])
async def test_200_and_201_are_success_with_rail_transaction_id(status: int) -> None:
    result = await dispatch_with(answering(status, executed()))
    assert result == DispatchResult(DispatchOutcome.SUCCESS, rail_transaction_id="rtx-1")


async def test_replayed_success_says_so_in_detail() -> None:
    result = await dispatch_with(answering(200, executed(replayed=True)))
    assert result.outcome is DispatchOutcome.SUCCESS
    assert result.detail == "replayed"


# Bodies an intermediary (proxy, load balancer, gateway) may answer with: none
# of them is the rail's ``{"code": "<CODE>", ...}`` shape.
NOT_RAIL_SHAPED = [
    b"",
    b"<html><body><h1>503 Service Unavailable</h1></body></html>",
    b"upstream connect error or disconnect/reset before headers",
    b'{"message": "Too Many Requests"}',
    b'{"code": 503, "message": "Service Unavailable"}',
    b'{"code": ""}',
    b'["RAIL_UNAVAILABLE"]',
    json.dumps({"code": "RAIL_UNAVAILABLE", "padding": "x" * MAX_RESPONSE_BYTES}).encode(),
]
NOT_RAIL_SHAPED_IDS = [
    "empty",
    "html",
    "text",
    "json-no-code",
    "json-int-code",
    "json-empty-code",
    "json-array",
    "oversized",
]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "RAIL_UNAVAILABLE"),
        (429, "RATE_LIMITED"),
        (408, "REQUEST_TIMEOUT"),
    ],
)
async def test_429_503_and_408_with_rail_error_body_are_retryable_with_its_code(
    status: int, code: str
) -> None:
    result = await dispatch_with(answering(status, {"code": code, "message": "not now"}))
    assert result.outcome is DispatchOutcome.RETRYABLE
    assert result.code == code
    assert result.detail == f"HTTP {status}: not now"


@pytest.mark.parametrize("status", [503, 429, 408])
@pytest.mark.parametrize("content", NOT_RAIL_SHAPED, ids=NOT_RAIL_SHAPED_IDS)
async def test_bare_429_503_and_408_are_ambiguous_unconfirmed_not_retryable(
    status: int, content: bytes
) -> None:
    # A proxy may answer these after it forwarded the request to the rail, so
    # they do not prove the payment was not executed.
    result = await dispatch_with(answering(status, content=content))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == f"RAIL_UNCONFIRMED_{status}"


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (500, None, "RAIL_SERVER_ERROR"),
        (502, None, "RAIL_SERVER_ERROR"),
        (504, None, "RAIL_SERVER_ERROR"),
        (500, {"code": "LEDGER_WRITE_FAILED", "message": "oops"}, "LEDGER_WRITE_FAILED"),
    ],
)
async def test_other_5xx_are_ambiguous(status: int, body: Any, code: str) -> None:
    result = await dispatch_with(answering(status, body))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == code


@pytest.mark.parametrize(
    ("status", "code"),
    [(422, "INSUFFICIENT_FUNDS"), (400, "INVALID_DESTINATION"), (403, "ACCOUNT_CLOSED")],
)
async def test_4xx_with_rail_error_body_is_terminal_with_its_code(status: int, code: str) -> None:
    result = await dispatch_with(answering(status, {"code": code, "message": "declined"}))
    assert result.outcome is DispatchOutcome.TERMINAL
    assert result.code == code
    assert result.detail == f"HTTP {status}: declined"


async def test_409_with_rail_reference_conflict_is_terminal_reference_conflict() -> None:
    result = await dispatch_with(
        answering(409, {"code": "REFERENCE_CONFLICT", "message": "reused"})
    )
    assert result.outcome is DispatchOutcome.TERMINAL
    assert result.code == "REFERENCE_CONFLICT"
    assert result.detail == "HTTP 409: reused"


@pytest.mark.parametrize(
    "content",
    [
        *NOT_RAIL_SHAPED,
        # Stripe-style "a request with this key is still being processed".
        json.dumps(
            {"error": {"type": "idempotency_error", "message": "request in progress"}}
        ).encode(),
    ],
    ids=[*NOT_RAIL_SHAPED_IDS, "nested-error"],
)
async def test_bare_409_is_ambiguous_unconfirmed_not_terminal(content: bytes) -> None:
    result = await dispatch_with(answering(409, content=content))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_UNCONFIRMED_409"


@pytest.mark.parametrize("code", ["IDEMPOTENCY_KEY_IN_USE", "reference_conflict", "CONFLICT"])
async def test_409_with_another_rail_code_is_ambiguous_with_that_code(code: str) -> None:
    # The rail has seen the reference and may be executing it right now.
    result = await dispatch_with(answering(409, {"code": code, "message": "in progress"}))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == code
    assert result.detail == "HTTP 409: in progress"


@pytest.mark.parametrize(
    ("status", "content"),
    [(404, b"<html>Not Found</html>"), (400, b""), (422, b'{"message": "no code"}')],
)
async def test_4xx_without_rail_error_code_is_ambiguous_not_terminal(
    status: int, content: bytes
) -> None:
    result = await dispatch_with(answering(status, content=content))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_MALFORMED_RESPONSE"


@pytest.mark.parametrize("status", [202, 204, 302])
async def test_unexpected_status_is_ambiguous(status: int) -> None:
    result = await dispatch_with(answering(status, content=b""))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_UNEXPECTED_STATUS"


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        b'{"status": "EXECUTED"}',
        b'{"rail_transaction_id": ""}',
        json.dumps(executed("another-reference")).encode(),
        json.dumps(executed(status="PENDING")).encode(),
        json.dumps(executed(padding="x" * MAX_RESPONSE_BYTES)).encode(),
    ],
    ids=["not-json", "array", "no-id", "empty-id", "other-ref", "not-executed", "oversized"],
)
async def test_malformed_success_body_is_ambiguous(content: bytes) -> None:
    result = await dispatch_with(answering(201, content=content))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_MALFORMED_RESPONSE"


async def test_implausible_rail_code_is_not_passed_through() -> None:
    result = await dispatch_with(answering(422, {"code": "<script>" * 20, "message": "x"}))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_MALFORMED_RESPONSE"


async def test_detail_is_bounded_even_for_huge_rail_messages() -> None:
    result = await dispatch_with(answering(422, {"code": "DECLINED", "message": "x" * 20_000}))
    assert result.outcome is DispatchOutcome.TERMINAL
    assert result.detail is not None
    assert len(result.detail) <= MAX_DETAIL_LENGTH


def test_result_types_bound_detail_on_construction() -> None:
    assert len(DispatchResult(DispatchOutcome.AMBIGUOUS, detail="y" * 900).detail or "") == 500
    assert len(LookupResult(LookupStatus.UNKNOWN, detail="y" * 900).detail or "") == 500


# --- dispatch classification by transport error -------------------------------------


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ConnectTimeout])
async def test_connect_failures_are_retryable_rail_unreachable(
    error: type[httpx.RequestError],
) -> None:
    result = await dispatch_with(raising(error))
    assert result.outcome is DispatchOutcome.RETRYABLE
    assert result.code == "RAIL_UNREACHABLE"


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout])
async def test_timeouts_after_connect_are_ambiguous_rail_timeout(
    error: type[httpx.RequestError],
) -> None:
    result = await dispatch_with(raising(error))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_TIMEOUT"


@pytest.mark.parametrize(
    "error", [httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.DecodingError]
)
async def test_other_transport_errors_are_ambiguous_transport_error(
    error: type[httpx.RequestError],
) -> None:
    result = await dispatch_with(raising(error))
    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_TRANSPORT_ERROR"


async def test_rail_that_never_answers_is_cut_off_as_ambiguous_timeout() -> None:
    # MockTransport ignores httpx's phase timeouts, so only the whole-call
    # backstop can end this call.
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(201, json=executed())

    started = time.monotonic()
    async with mock_client(never) as client:
        result = await client.dispatch(REF, rail_type="ach", payload={}, timeout=0.05)
        lookup = await client.lookup(REF, timeout=0.05)

    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_TIMEOUT"
    assert lookup.status is LookupStatus.UNKNOWN
    assert time.monotonic() - started < 2


# --- lookup classification -------------------------------------------------------------


async def test_lookup_gets_reference_path_and_reports_executed() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=executed())

    result = await lookup_with(handler)

    assert result == LookupResult(LookupStatus.EXECUTED, rail_transaction_id="rtx-1")
    assert seen[0].method == "GET"
    assert seen[0].url == f"http://rail.test/v1/payments/{REF}"


async def test_lookup_404_with_rail_not_found_is_not_found() -> None:
    result = await lookup_with(answering(404, {"code": "NOT_FOUND", "message": "never executed"}))
    assert result.status is LookupStatus.NOT_FOUND


@pytest.mark.parametrize(
    "content",
    [
        *NOT_RAIL_SHAPED,
        b'{"detail": "Not Found"}',
        b'{"code": "ROUTE_NOT_FOUND"}',
        b'{"code": "not_found"}',
    ],
    ids=[*NOT_RAIL_SHAPED_IDS, "framework-default", "other-code", "lowercase-code"],
)
async def test_lookup_bare_404_is_unknown_not_not_found(content: bytes) -> None:
    # A wrong URL or a load balancer's default page says nothing about the payment.
    result = await lookup_with(answering(404, content=content))
    assert result.status is LookupStatus.UNKNOWN


@pytest.mark.parametrize(
    "handler",
    [
        answering(500),
        answering(503, {"code": "RAIL_UNAVAILABLE"}),
        answering(409, {"code": "NOT_FOUND"}),
        answering(200, content=b"garbage"),
        answering(200, {"reference": REF, "status": "PENDING"}),
        answering(200, executed("another-reference")),
        raising(httpx.ConnectError),
        raising(httpx.ReadTimeout),
    ],
    ids=[
        "500",
        "503",
        "409-not-found-code",
        "garbage",
        "pending",
        "other-ref",
        "connect-error",
        "read-timeout",
    ],
)
async def test_lookup_is_unknown_for_anything_but_a_clear_answer(handler: Handler) -> None:
    result = await lookup_with(handler)
    assert result.status is LookupStatus.UNKNOWN


# --- what proves a payment was executed (issue 14, item 3) -----------------------------
# Failed on main: a lookup answered 200 {"status": "EXECUTED"} (no reference, no transaction
# id: a generic or cached page) confirmed the payment, and any string (empty, 10 kB, with
# NULs) passed as the transaction id. Both a lookup and a dispatch success now need the item's
# own reference and a transaction id the ledger can record unchanged.

# Transaction ids that prove nothing or cannot be stored as they are, by class.
BAD_TRANSACTION_IDS: list[Any] = [
    None, "", " ", "   ", 0, 123, 1.5, True, [], ["rtx-1"], {"id": "rtx-1"},
    "r" * 201, "rtx-\x00-1", "rtx-\n1", "rtx-\t1", "rtx-\x7f", "rtx-\x85",
    "rtx-\u200b", "rtx-\u2028", "rtx-\ufeff", "rtx-\u061c", "rtx-\ud800",
    "rtx-\ue000", "rtx-\U000e0001", "\u00a0", " rtx-1", "rtx-1 ",
]
GOOD_TRANSACTION_IDS = ["rtx-1", "TX 2026/12/05:000123", "r" * 200, "Überweisung-7", "7"]


@pytest.mark.parametrize(
    "body",
    [
        {"status": "EXECUTED"},
        {"status": "EXECUTED", "rail_transaction_id": "rtx-1"},
        {"reference": None, "status": "EXECUTED", "rail_transaction_id": "rtx-1"},
        {"reference": REF.upper(), "status": "EXECUTED", "rail_transaction_id": "rtx-1"},
        {"reference": REF + " ", "status": "EXECUTED", "rail_transaction_id": "rtx-1"},
        executed("another-reference"),
        {"reference": REF, "rail_transaction_id": "rtx-1"},
        {"reference": REF, "status": "executed", "rail_transaction_id": "rtx-1"},
    ],
    ids=["status-only", "no-reference", "null-reference", "other-case", "padded-reference",
         "other-reference", "no-status", "lowercase-status"],
)
async def test_lookup_that_does_not_name_this_payment_is_unknown(body: dict[str, Any]) -> None:
    result = await lookup_with(answering(200, body))
    assert result.status is LookupStatus.UNKNOWN
    assert result.rail_transaction_id is None


@pytest.mark.parametrize("transaction_id", BAD_TRANSACTION_IDS)
async def test_lookup_without_a_usable_transaction_id_is_unknown(transaction_id: Any) -> None:
    body: dict[str, Any] = {"reference": REF, "status": "EXECUTED"}
    body["rail_transaction_id"] = transaction_id
    # ASCII JSON: an escape such as "\ud800" reaches the parser as a rail would send it.
    result = await lookup_with(answering(200, content=json.dumps(body).encode()))
    assert result.status is LookupStatus.UNKNOWN
    assert result.rail_transaction_id is None


async def test_lookup_with_no_transaction_id_member_is_unknown() -> None:
    result = await lookup_with(answering(200, {"reference": REF, "status": "EXECUTED"}))
    assert result.status is LookupStatus.UNKNOWN


@pytest.mark.parametrize("transaction_id", GOOD_TRANSACTION_IDS)
async def test_lookup_and_dispatch_keep_a_good_transaction_id_unchanged(
    transaction_id: str,
) -> None:
    body = executed(rail_transaction_id=transaction_id)
    looked_up = await lookup_with(answering(200, body))
    dispatched = await dispatch_with(answering(201, body))
    assert looked_up == LookupResult(LookupStatus.EXECUTED, rail_transaction_id=transaction_id)
    assert dispatched == DispatchResult(DispatchOutcome.SUCCESS,
                                        rail_transaction_id=transaction_id)


@pytest.mark.parametrize("transaction_id", BAD_TRANSACTION_IDS)
async def test_dispatch_success_without_a_usable_transaction_id_is_ambiguous(
    transaction_id: Any,
) -> None:
    body: dict[str, Any] = {"reference": REF, "status": "EXECUTED"}
    body["rail_transaction_id"] = transaction_id
    result = await dispatch_with(answering(201, content=json.dumps(body).encode()))
    assert (result.outcome, result.code) == (DispatchOutcome.AMBIGUOUS,
                                             "RAIL_MALFORMED_RESPONSE")
    assert result.rail_transaction_id is None


async def test_dispatch_success_that_names_no_reference_is_ambiguous() -> None:
    result = await dispatch_with(answering(200, {"rail_transaction_id": "rtx-1"}))
    assert (result.outcome, result.code) == (DispatchOutcome.AMBIGUOUS,
                                             "RAIL_MALFORMED_RESPONSE")


@pytest.mark.parametrize("transaction_id", BAD_TRANSACTION_IDS)
def test_results_built_elsewhere_cannot_claim_execution_without_proof(
    transaction_id: Any,
) -> None:
    # Any RailClient, not only the HTTP one: the result types refuse the claim themselves.
    success = DispatchResult(DispatchOutcome.SUCCESS, rail_transaction_id=transaction_id)
    assert (success.outcome, success.code, success.rail_transaction_id) == (
        DispatchOutcome.AMBIGUOUS, "RAIL_MALFORMED_RESPONSE", None)
    found = LookupResult(LookupStatus.EXECUTED, rail_transaction_id=transaction_id)
    assert (found.status, found.rail_transaction_id) == (LookupStatus.UNKNOWN, None)


# --- against a real simulator on loopback ------------------------------------------


@pytest.fixture
async def rail() -> AsyncIterator[RailSimServer]:
    server = RailSimServer(RailSimConfig(port=0))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(rail: RailSimServer) -> AsyncIterator[HttpRailClient]:
    async with HttpRailClient(rail.url) as rail_client:
        yield rail_client


async def put_behaviour(rail: RailSimServer, **fields: Any) -> None:
    async with httpx.AsyncClient(base_url=rail.url) as admin:
        response = await admin.put("/v1/behaviour", json=fields)
        response.raise_for_status()


async def get_stats(rail: RailSimServer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=rail.url) as admin:
        response = await admin.get("/v1/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


async def send(client: HttpRailClient, destination: str, *, within: float = 2.0) -> DispatchResult:
    return await client.dispatch(
        REF, rail_type="sepa", payload={"destination": destination}, timeout=within
    )


async def wait_until(condition: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    # The simulator has no push notifications, so polling is the only way to
    # observe a call that the client has already given up on.
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_loopback_success_then_retry_replays_without_second_execution(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    first = await send(client, "DE-1")
    again = await send(client, "DE-1")

    assert first.outcome is DispatchOutcome.SUCCESS
    assert again.outcome is DispatchOutcome.SUCCESS
    assert again.rail_transaction_id == first.rail_transaction_id
    stats = await get_stats(rail)
    assert stats["executions"] == {REF: 1}
    assert stats["calls"] == {REF: 2}


async def test_hang_after_execute_times_out_ambiguous_but_lookup_finds_the_payment(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    timed_out = await send(client, "HANG:1", within=0.2)
    lookup = await client.lookup(REF, timeout=2)
    resend = await send(client, "HANG:1")

    assert timed_out.outcome is DispatchOutcome.AMBIGUOUS
    assert timed_out.code == "RAIL_TIMEOUT"
    assert lookup.status is LookupStatus.EXECUTED
    assert resend.outcome is DispatchOutcome.SUCCESS
    assert resend.rail_transaction_id == lookup.rail_transaction_id
    assert rail.simulator.execution_count(REF) == 1
    assert rail.simulator.call_count(REF) == 2


async def test_hang_before_execute_lookup_not_found_and_resend_executes_exactly_once(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    await put_behaviour(rail, hang_mode=HangMode.BEFORE_EXECUTE.value, hang_seconds=0.5)

    timed_out = await send(client, "HANG:1", within=0.2)
    lookup = await client.lookup(REF, timeout=2)
    resend = await send(client, "HANG:1")

    # The hung call wakes up later and must find the payment already executed.
    async def hung_call_finished() -> bool:
        return bool((await get_stats(rail))["in_flight"] == 0)

    await wait_until(hung_call_finished)

    assert timed_out.outcome is DispatchOutcome.AMBIGUOUS
    assert lookup.status is LookupStatus.NOT_FOUND
    assert resend.outcome is DispatchOutcome.SUCCESS
    stats = await get_stats(rail)
    assert stats["executions"] == {REF: 1}
    assert stats["calls"] == {REF: 2}


async def test_concurrent_dispatches_of_one_reference_execute_once(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    await put_behaviour(rail, latency_ms=20)

    results = await asyncio.gather(*(send(client, "DE-1") for _ in range(40)))

    assert {r.outcome for r in results} == {DispatchOutcome.SUCCESS}
    assert len({r.rail_transaction_id for r in results}) == 1
    stats = await get_stats(rail)
    assert stats["executions"] == {REF: 1}
    assert stats["calls"] == {REF: 40}
    assert stats["max_executions_per_reference"] == 1


async def test_retry_trigger_is_retryable_until_it_executes(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    results = [await send(client, "RETRY:2") for _ in range(3)]

    assert [r.outcome for r in results] == [
        DispatchOutcome.RETRYABLE,
        DispatchOutcome.RETRYABLE,
        DispatchOutcome.SUCCESS,
    ]
    assert results[0].code == "RAIL_UNAVAILABLE"
    assert rail.simulator.execution_count(REF) == 1


async def test_fail_trigger_is_terminal_with_its_code_and_not_executed(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    result = await send(client, "FAIL:INSUFFICIENT_FUNDS")
    lookup = await client.lookup(REF, timeout=2)

    assert result.outcome is DispatchOutcome.TERMINAL
    assert result.code == "INSUFFICIENT_FUNDS"
    assert lookup.status is LookupStatus.NOT_FOUND


async def test_reference_reused_with_other_payload_is_terminal_reference_conflict(
    client: HttpRailClient,
) -> None:
    await send(client, "DE-1")
    result = await send(client, "DE-2")

    assert result.outcome is DispatchOutcome.TERMINAL
    assert result.code == "REFERENCE_CONFLICT"


async def test_behaviour_changed_at_runtime_takes_effect_and_is_validated(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    await put_behaviour(rail, retryable_failure_rate=1.0)
    result = await send(client, "DE-1")
    async with httpx.AsyncClient(base_url=rail.url) as admin:
        current = (await admin.get("/v1/behaviour")).json()
        rejected = await admin.put("/v1/behaviour", json={"hang_rate": 2})

    assert result.outcome is DispatchOutcome.RETRYABLE
    assert rail.simulator.execution_count(REF) == 0
    assert current["retryable_failure_rate"] == 1.0
    assert rejected.status_code == 400
    assert rejected.json()["code"] == "INVALID_BEHAVIOUR"


async def test_stats_reset_and_health_endpoints(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    await send(client, "DE-1")
    async with httpx.AsyncClient(base_url=rail.url) as admin:
        health = await admin.get("/healthz")
        before = (await admin.get("/v1/stats")).json()
        reset = await admin.post("/v1/reset")
        after = (await admin.get("/v1/stats")).json()

    assert health.json() == {"status": "ok"}
    assert before["total_executions"] == 1
    assert before["total_calls"] == 1
    assert reset.status_code == 200
    assert after["executions"] == {}
    assert after["total_calls"] == 0


@pytest.mark.parametrize(
    ("headers", "content", "code"),
    [
        ({"Idempotency-Key": REF}, b"{not json", "INVALID_JSON"),
        (
            {},
            json.dumps({"reference": REF, "rail_type": "ach", "payload": {}}).encode(),
            "MISSING_IDEMPOTENCY_KEY",
        ),
    ],
    ids=["invalid-json", "missing-key"],
)
async def test_simulator_rejects_bad_requests_with_coded_400(
    rail: RailSimServer, headers: dict[str, str], content: bytes, code: str
) -> None:
    async with httpx.AsyncClient(base_url=rail.url) as raw:
        response = await raw.post("/v1/payments", content=content, headers=headers)

    assert response.status_code == 400
    assert response.json()["code"] == code


async def test_misrouted_base_url_is_ambiguous_for_dispatch_and_unknown_for_lookup(
    rail: RailSimServer,
) -> None:
    # The simulator's framework answers unknown paths with a bare 404: neither
    # "declined" nor "never executed".
    async with HttpRailClient(f"{rail.url}/wrong-prefix/") as client:
        result = await send(client, "DE-1")
        lookup = await client.lookup(REF, timeout=2)

    assert result.outcome is DispatchOutcome.AMBIGUOUS
    assert result.code == "RAIL_MALFORMED_RESPONSE"
    assert lookup.status is LookupStatus.UNKNOWN
    assert rail.simulator.call_count(REF) == 0


async def test_proxy_settings_in_the_environment_are_ignored(
    rail: RailSimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = RailSimServer(RailSimConfig(port=0))
    await dead.start()
    dead_proxy = dead.url
    await dead.stop()
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)

    async with HttpRailClient(rail.url) as client:
        result = await send(client, "DE-1")
        lookup = await client.lookup(REF, timeout=2)

    assert result.outcome is DispatchOutcome.SUCCESS
    assert lookup.status is LookupStatus.EXECUTED
    assert rail.simulator.execution_count(REF) == 1


async def test_unreachable_rail_is_retryable_for_dispatch_and_unknown_for_lookup() -> None:
    server = RailSimServer(RailSimConfig(port=0))
    await server.start()
    url = server.url
    await server.stop()

    async with HttpRailClient(url) as client:
        result = await send(client, "DE-1")
        lookup = await client.lookup(REF, timeout=2)

    assert result.outcome is DispatchOutcome.RETRYABLE
    assert result.code == "RAIL_UNREACHABLE"
    assert lookup.status is LookupStatus.UNKNOWN


# --- server lifecycle ---------------------------------------------------------------


async def test_server_start_and_stop_tolerate_repeats_and_url_tracks_state() -> None:
    server = RailSimServer(RailSimConfig(port=0))
    with pytest.raises(RuntimeError):
        _ = server.url
    await server.start()
    url = server.url
    await server.start()
    assert server.url == url
    assert int(url.rsplit(":", 1)[1]) > 0
    await server.stop()
    await server.stop()
    assert not server.running
    with pytest.raises(RuntimeError):
        _ = server.url


async def test_stop_during_a_hang_returns_promptly(
    rail: RailSimServer, client: HttpRailClient
) -> None:
    hung = asyncio.create_task(send(client, "HANG:1", within=10))

    async def hanging_after_execution() -> bool:
        return rail.simulator.execution_count(REF) == 1

    await wait_until(hanging_after_execution)

    started = time.monotonic()
    await rail.stop()

    assert time.monotonic() - started < 1.5
    # After-execute hang: the withheld answer is released when the server stops.
    assert (await hung).outcome is DispatchOutcome.SUCCESS


async def test_port_already_in_use_raises_os_error(rail: RailSimServer) -> None:
    port = int(rail.url.rsplit(":", 1)[1])
    clash = RailSimServer(RailSimConfig(port=port))
    with pytest.raises(OSError):
        await clash.start()
    assert not clash.running


async def test_behaviour_given_at_start_is_applied() -> None:
    config = RailSimConfig(port=0, behaviour=RailSimBehaviour(terminal_failure_rate=1.0, seed=1))
    async with RailSimServer(config) as server, HttpRailClient(server.url) as client:
        result = await send(client, "DE-1")

    assert result.outcome is DispatchOutcome.TERMINAL
    assert result.code in RailSimBehaviour().terminal_codes
