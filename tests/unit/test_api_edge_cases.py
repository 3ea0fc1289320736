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

import json
import re
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
from starlette.routing import Mount
from tests.support.api import Member, Running, new_member, payment_body, row_counts, serve

from symphony.db import Database
from symphony.outbox.access import AccessStore, TokenKind
from symphony.services.api.ops import operator_routers
from symphony.services.rail_sim.app import create_app as create_rail_sim_app
from symphony.services.rail_sim.simulator import RailSimulator

JSON = {"Content-Type": "application/json"}
SAMPLE_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    async with serve(isolated_db, routers=operator_routers(),
                     authenticator=AccessStore(isolated_db)) as running:
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


PARTICIPANT_ROUTES = (("POST", "/v1/payments"), ("GET", "/v1/payments"),
                      ("GET", f"/v1/payments/{SAMPLE_ID}"))
OPERATOR_ROUTES = (("GET", "/v1/ops/status"), ("GET", f"/v1/ops/payments/{SAMPLE_ID}"),
                   ("GET", "/v1/ops/failures"), ("GET", "/v1/ops/throughput"))


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
    cases = [
        (PARTICIPANT_ROUTES, {**refused_everywhere, "operator token": operator.token}),
        (OPERATOR_ROUTES, {**refused_everywhere, "participant token": member.token}),
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
                    content=json.dumps(payment_body()) if method == "POST" else None)
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
