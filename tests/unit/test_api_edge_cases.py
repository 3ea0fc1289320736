"""The API's answers at its edges, over real HTTP (uvicorn on loopback, the real database and
token store): each test covers a class of requests, not one example.

- A JSON body with a member named twice, at any depth, is 400 `invalid_json`: a proxy or an
  auditor reading the first value must never see another payment than the one stored.
- A trailing slash on any route is the same 404 envelope as any other miss: no redirect, so
  no `Location` built from the client's `Host` header.
- Credentials that do not open a door get one answer, byte for byte (except the request id):
  malformed, unknown, revoked, or a real token of the other kind.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
from starlette.routing import Mount
from tests.support.api import Member, Running, new_member, payment_body, row_counts, serve

from symphony.db import Database
from symphony.outbox.access import AccessStore, TokenKind
from symphony.services.rail_sim.app import create_app as create_rail_sim_app
from symphony.services.rail_sim.simulator import RailSimulator
from symphony.services.system.api import product_routers

JSON = {"Content-Type": "application/json"}
SAMPLE_ID = "00000000-0000-4000-8000-000000000000"
BODY_DEADLINE = 6.0


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    # The product's routers, as `symphony api` mounts them: a route added there is covered.
    async with serve(isolated_db, routers=product_routers(),
                     authenticator=AccessStore(isolated_db),
                     body_timeout_seconds=BODY_DEADLINE) as running:
        yield running


@pytest.fixture
async def alice(isolated_db: Database) -> Member:
    return await new_member(isolated_db, "alice")


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "request_id"}, body
    assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# -- duplicate JSON members (issue 14, item 7) --------------------------------------------


def _with_duplicate(where: str) -> str:
    """A valid payment body as JSON text, with one member named twice at `where`."""
    body = payment_body(metadata={"invoice": "A-1", "lines": [{"sku": "x", "qty": "1"}]})
    text = json.dumps(body)
    if where == "top":
        return text[:-1] + ', "amount": "9999.00"}'
    if where == "top-first":
        return '{"amount": "9999.00", ' + text[1:]
    if where == "metadata":
        return text.replace('"invoice": "A-1"', '"invoice": "A-1", "invoice": "B-2"')
    if where == "nested":
        return text.replace('"qty": "1"', '"qty": "1", "qty": "100"')
    if where == "same-value":
        # Even a repeat of the same value: the rule is about the text, not the outcome.
        return text.replace('"currency": "EUR"', '"currency": "EUR", "currency": "EUR"')
    if where == "escaped":
        # One name spelled two ways is still one name once decoded.
        return text.replace('"currency": "EUR"', '"currency": "EUR", "curr\\u0065ncy": "USD"')
    raise AssertionError(where)


@pytest.mark.parametrize("where",
                         ["top", "top-first", "metadata", "nested", "same-value", "escaped"])
async def test_a_member_named_twice_at_any_depth_is_400_invalid_json(
    api: Running, alice: Member, isolated_admin_dsn: str, where: str
) -> None:
    before = await row_counts(isolated_admin_dsn)
    response = await api.client.post(
        "/v1/payments", content=_with_duplicate(where).encode(),
        headers={**alice.headers(f"k-{uuid4()}"), **JSON})
    envelope(response, 400, "invalid_json")
    assert await row_counts(isolated_admin_dsn) == before


async def test_the_same_name_in_different_objects_is_fine(api: Running, alice: Member) -> None:
    # metadata is one flat object (the database's rule); its names may repeat the top's.
    body = payment_body(metadata={"amount": "note", "currency": "x", "destination": "y"})
    response = await api.client.post("/v1/payments", content=json.dumps(body),
                                      headers={**alice.headers(f"k-{uuid4()}"), **JSON})
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == body["metadata"]


# -- no redirect, the envelope for every miss (issue 14, item 8) ---------------------------


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", SAMPLE_ID, path)


def _routes(routes: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for route in routes:
        # Newer FastAPI keeps an included router as one entry holding the original router.
        included = getattr(route, "original_router", None)
        flat.extend(_routes(included.routes) if included is not None else [route])
    return flat


def _every_route(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route and mount the app serves, parameters filled in."""
    found: list[tuple[str, str]] = []
    for route in _routes(app.routes):
        if isinstance(route, Mount):
            found.append(("GET", route.path))
        else:
            for method in sorted(route.methods):
                found.append((method, _concrete(route.path)))
    return found


async def test_a_trailing_slash_on_any_route_is_the_404_envelope_never_a_redirect(
    api: Running, alice: Member
) -> None:
    routes = _every_route(api.server.app)
    paths = {path for _, path in routes}
    documented = {_concrete(path) for path in api.server.app.openapi()["paths"]}
    assert documented | {"/docs", "/docs/assets", "/openapi.json"} <= paths, paths
    hostile = {"Host": "evil.example", "X-Forwarded-Host": "evil.example",
               "X-Forwarded-Proto": "https", **JSON}
    checked = 0
    for method, path in routes:
        if path == "/" or path.endswith("/"):
            continue
        for headers in (hostile, {**hostile, **alice.headers(f"k-{uuid4()}")}):
            response = await api.client.request(
                method, path + "/", headers=headers,
                content=json.dumps(payment_body()) if method in ("POST", "PUT", "PATCH") else None)
            assert "location" not in response.headers, (method, path, response.headers)
            assert not 300 <= response.status_code < 400, (method, path)
            if method == "HEAD":  # no body to hold the envelope
                assert response.status_code == 404, (method, path)
                continue
            envelope(response, 404, "not_found")
            assert "evil.example" not in response.text
            checked += 1
    assert checked >= 2 * len(paths) - 2


# -- one answer for every refused credential (issue 14, item 10) ---------------------------


def _comparable(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body, without what differs per request (its id and the date)."""
    headers = {name: value for name, value in response.headers.items()
               if name not in ("x-request-id", "date")}
    rid = response.headers["x-request-id"]
    body = response.content.replace(rid.encode(), b"<request-id>")
    return response.status_code, headers, body


def _token_routes(app: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every route under /v1: (participant routes, operator routes under /v1/ops)."""
    routes = [(m, p) for m, p in _every_route(app) if p.startswith("/v1/") and m != "HEAD"]
    operator = [(m, p) for m, p in routes if p.startswith("/v1/ops/")]
    participant = [route for route in routes if route not in operator]
    assert ("POST", "/v1/payments") in participant and ("GET", "/v1/ops/status") in operator
    return participant, operator


async def test_every_refused_credential_gets_one_answer_byte_for_byte(
    api: Running, isolated_db: Database, isolated_admin_dsn: str
) -> None:
    access = AccessStore(isolated_db)
    member = await new_member(isolated_db, "door")
    operator = await access.issue_token(TokenKind.OPERATOR, label="door test")
    revoked_member = await new_member(isolated_db, "gone")
    await access.revoke_token(revoked_member.token_id)
    revoked_operator = await access.issue_token(TokenKind.OPERATOR, label="gone")
    await access.revoke_token(revoked_operator.token_id)
    of_revoked_participant = await new_member(isolated_db, "left")
    await access.revoke_participant(of_revoked_participant.participant_id)

    refused_everywhere = {
        "unknown participant-shaped": f"sy_pt_{uuid4().hex}_{'A' * 43}",
        "unknown operator-shaped": f"sy_op_{uuid4().hex}_{'A' * 43}",
        "unknown free-form": "not-a-real-token",
        "malformed": "bad!token",
        "revoked participant token": revoked_member.token,
        "token of a revoked participant": of_revoked_participant.token,
        "revoked operator token": revoked_operator.token,
    }
    participant_routes, operator_routes = _token_routes(api.server.app)
    cases = [
        (participant_routes, {**refused_everywhere, "operator token": operator.token}),
        (operator_routes, {**refused_everywhere, "participant token": member.token}),
    ]
    before = await row_counts(isolated_admin_dsn)
    for routes, tokens in cases:
        for method, path in routes:
            answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
            for name, token in tokens.items():
                response = await api.client.request(
                    method, path,
                    headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1",
                             **JSON},
                    content=json.dumps(payment_body()) if method != "GET" else None)
                envelope(response, 401, "unauthorized")
                answers[name] = _comparable(response)
            reference = answers["unknown participant-shaped"]
            for name, answer in answers.items():
                assert answer == reference, (method, path, name, answer, reference)
    # Refused before anything was written.
    assert await row_counts(isolated_admin_dsn) == before
    # And the doors do open for the right token.
    ok = await api.client.get("/v1/ops/status", headers={"Authorization": f"Bearer {operator.token}"})
    assert ok.status_code == 200
    mine = await api.client.get("/v1/payments", headers=member.headers())
    assert mine.status_code == 200


async def test_the_rail_simulator_redirects_nothing_either() -> None:
    app = create_rail_sim_app(RailSimulator())
    routes = _every_route(app)
    assert routes
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rail.test") as client:
        for method, path in routes:
            response = await client.request(method, path + "/",
                                            headers={"Host": "evil.example"})
            assert "location" not in response.headers, (method, path)
            assert response.status_code == 404, (method, path, response.status_code)


# -- ambiguous framing (issue 14, item 9) --------------------------------------------------


def _exchange(url: str, raw: bytes, *, wait: float = 10.0) -> bytes:
    """Send `raw` on one connection and read until the server closes it (or `wait` passes:
    then the connection was kept open, which the caller's assertion reports)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(raw)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
    return received


def _smuggling_requests(token: str) -> list[bytes]:
    body = json.dumps(payment_body()).encode()
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    auth = f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    cases = []
    for first, second in (("Content-Length: {n}", "Transfer-Encoding: chunked"),
                          ("Transfer-Encoding: chunked", "Content-Length: {n}"),
                          ("content-length: {n}", "transfer-encoding: chunked"),
                          ("Content-Length: {n}", "Transfer-Encoding: gzip, chunked")):
        for payload in (chunked, b"0\r\n\r\n" + smuggled):
            head = (f"POST /v1/payments HTTP/1.1\r\nHost: api\r\nIdempotency-Key: k-{uuid4()}\r\n"
                    f"{auth}{first}\r\n{second}\r\n\r\n").replace("{n}", str(len(payload)))
            cases.append(head.encode() + payload + smuggled)
        cases.append((f"GET /healthz HTTP/1.1\r\nHost: api\r\n{first}\r\n{second}\r\n\r\n")
                     .replace("{n}", "5").encode() + b"0\r\n\r\n" + smuggled)
    return cases


async def test_content_length_with_transfer_encoding_is_400_and_closed(
    api: Running, alice: Member, isolated_admin_dsn: str
) -> None:
    before = await row_counts(isolated_admin_dsn)
    for raw in _smuggling_requests(alice.token):
        answer = await asyncio.to_thread(_exchange, api.url, raw)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        # One answer, then the server closed: the request behind it was never served.
        assert answer.count(b"HTTP/1.1 ") == 1, answer
        assert b"<still open>" not in answer, answer
        assert b"connection: close" in answer.lower()
    assert await row_counts(isolated_admin_dsn) == before
    # The same request framed once is served, and a pipelined one behind it too.
    body = json.dumps(payment_body()).encode()
    good = (f"POST /v1/payments HTTP/1.1\r\nHost: api\r\nIdempotency-Key: k-{uuid4()}\r\n"
            f"Authorization: Bearer {alice.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    answer = await asyncio.to_thread(
        _exchange, api.url,
        good + b"GET /healthz HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 201 ") and answer.count(b"HTTP/1.1 200 ") == 1, answer


# -- a body is awaited only for a caller with a token (issue 14, item 2) -------------------


def _stalled_without_token(url: str, method: str, path: str) -> tuple[bytes, float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=BODY_DEADLINE + 5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: api\r\nContent-Type: "
                     "application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


async def test_every_route_with_a_body_refuses_a_caller_without_a_token_before_reading_it(
    api: Running,
) -> None:
    """FastAPI reads a body declared as a parameter before it runs the route's dependencies
    (authentication among them): a route that did so would wait out the body deadline for
    any anonymous client. Every route that takes a body must answer 401 at once instead
    (read the body in the handler, after the auth dependency, as POST /v1/payments does)."""
    with_body = [(m, p) for m, p in _every_route(api.server.app)
                 if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert ("POST", "/v1/payments") in with_body
    for method, path in with_body:
        answer, took = await asyncio.to_thread(_stalled_without_token, api.url, method, path)
        assert answer.startswith(b"HTTP/1.1 401 "), (method, path, answer[:120])
        assert took < BODY_DEADLINE / 2, (method, path, took)
