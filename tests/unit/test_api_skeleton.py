"""The API's frame over real HTTP: request ids, the error envelope, body and media limits,
bearer authentication for any router, the token cache's bound, and docs with no CDN."""

from __future__ import annotations

import asyncio
import socket
from typing import Annotated
from uuid import uuid4

import httpx
import pytest
from fastapi import APIRouter, Depends, Request
from tests.support.api import serve

from symphony.db import Database, Principal
from symphony.outbox.access import TokenKind
from symphony.services.api import (
    ApiConfig,
    CachedAuthenticator,
    Caller,
    require_operator,
    require_participant,
)
from symphony.services.api.error import REQUEST_ID_PATTERN


class FakeTokens:
    """Stands in for the token store where only the HTTP frame is under test."""

    def __init__(self) -> None:
        self.tokens: dict[str, Caller] = {}
        self.asked = 0

    def add(self, token: str, kind: TokenKind, participant_id: str | None = None) -> None:
        self.tokens[token] = Caller(token_id=uuid4(), kind=kind, participant_id=participant_id)

    async def authenticate(self, token: str) -> Caller | None:
        self.asked += 1
        return self.tokens.get(token)


def probe_router() -> APIRouter:
    router = APIRouter()

    @router.get("/probe/participant")
    async def participant(caller: Annotated[Caller, Depends(require_participant)]) -> dict[str, str]:
        return {"participant_id": str(caller.participant_id)}

    @router.get("/probe/operator")
    async def operator(caller: Annotated[Caller, Depends(require_operator)]) -> dict[str, str]:
        return {"kind": caller.kind}

    @router.post("/probe/echo")
    async def echo(
        request: Request, caller: Annotated[Caller, Depends(require_participant)]
    ) -> dict[str, int]:
        return {"read": len(await request.body())}

    @router.get("/probe/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(30)
        return {"late": "yes"}

    @router.get("/probe/crash")
    async def crash() -> dict[str, str]:
        raise RuntimeError("boom with a secret value 4111-1111")

    return router


@pytest.fixture
def tokens() -> FakeTokens:
    t = FakeTokens()
    t.add("sy_pt_alpha", TokenKind.PARTICIPANT, "alpha")
    t.add("sy_op_root", TokenKind.OPERATOR)
    return t


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_healthz_and_request_ids(db: Database) -> None:
    async with serve(db) as api:
        ok = await api.client.get("/healthz")
        assert ok.status_code == 200 and ok.json() == {"status": "ok"}
        assert REQUEST_ID_PATTERN.fullmatch(ok.headers["x-request-id"])
        mine = await api.client.get("/healthz", headers={"X-Request-Id": "trace-0123456789"})
        assert mine.headers["x-request-id"] == "trace-0123456789"
        for hostile in ("short", "x" * 65, "bad id with spaces", "a\tb-cdefghij", "ok;evil=1234"):
            other = await api.client.get("/healthz", headers={"X-Request-Id": hostile})
            assert other.headers["x-request-id"] != hostile
            assert REQUEST_ID_PATTERN.fullmatch(other.headers["x-request-id"])
        # Ids are made server side, one per request.
        ids = {(await api.client.get("/healthz")).headers["x-request-id"] for _ in range(5)}
        assert len(ids) == 5


async def test_readyz_reports_the_schema(db: Database) -> None:
    async with serve(db) as api:
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready"
        assert body["schema_version"] == body["expected_schema_version"]


async def test_unknown_route_and_method_use_the_envelope(db: Database) -> None:
    async with serve(db) as api:
        assert_envelope(await api.client.get("/nope"), 404, "not_found")
        assert_envelope(await api.client.delete("/healthz"), 405, "method_not_allowed")


async def test_a_crash_is_a_500_envelope_without_detail(db: Database) -> None:
    async with serve(db, routers=[probe_router()]) as api:
        response = await api.client.get("/probe/crash")
        body = assert_envelope(response, 500, "internal_error")
        assert "4111" not in response.text and "boom" not in str(body)


async def test_bearer_tokens_by_kind(db: Database, tokens: FakeTokens) -> None:
    async with serve(db, routers=[probe_router()], authenticator=tokens) as api:
        c = api.client
        missing = await c.get("/probe/participant")
        assert_envelope(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == 'Bearer realm="symphony"'
        for header in ("Bearer sy_pt_unknown", "Basic c3k6cHQ=", "Bearer", "Bearer a b",
                       "Bearer " + "x" * 600, "sy_pt_alpha"):
            bad = await c.get("/probe/participant", headers={"Authorization": header})
            assert_envelope(bad, 401, "unauthorized")
            assert 'error="invalid_token"' in bad.headers["www-authenticate"]
        good = await c.get("/probe/participant", headers={"Authorization": "Bearer sy_pt_alpha"})
        assert good.status_code == 200 and good.json() == {"participant_id": "alpha"}
        lower = await c.get("/probe/participant", headers={"Authorization": "bearer sy_pt_alpha"})
        assert lower.status_code == 200
        # A token of the other kind does not open the door.
        op_on_participant = await c.get("/probe/participant",
                                        headers={"Authorization": "Bearer sy_op_root"})
        assert_envelope(op_on_participant, 401, "unauthorized")
        pt_on_operator = await c.get("/probe/operator",
                                     headers={"Authorization": "Bearer sy_pt_alpha"})
        assert_envelope(pt_on_operator, 401, "unauthorized")
        op = await c.get("/probe/operator", headers={"Authorization": "Bearer sy_op_root"})
        assert op.status_code == 200 and op.json() == {"kind": "OPERATOR"}


async def test_body_limit_by_content_length_and_by_stream(db: Database, tokens: FakeTokens) -> None:
    auth = {"Authorization": "Bearer sy_pt_alpha", "Content-Type": "application/json"}
    async with serve(db, routers=[probe_router()], authenticator=tokens,
                     body_limit_bytes=2048) as api:
        small = await api.client.post("/probe/echo", content=b"{}", headers=auth)
        assert small.status_code == 200
        big = await api.client.post("/probe/echo", content=b" " * 2049, headers=auth)
        assert_envelope(big, 413, "payload_too_large")
        assert tokens.asked == 1, "refused before authentication was even asked"

        async def stream() -> object:
            for _ in range(10):
                yield b" " * 1000

        streamed = await api.client.post("/probe/echo", content=stream(), headers=auth)
        assert "content-length" not in streamed.request.headers
        assert_envelope(streamed, 413, "payload_too_large")


def test_config_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SYMPHONY_API_PORT", "SYMPHONY_API_HOST", "SYMPHONY_API_AUTH_CACHE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    config = ApiConfig.load()
    assert (config.host, config.port, config.body_limit_bytes, config.auth_cache_seconds) == (
        "127.0.0.1", 8080, 65536, 2.0)
    monkeypatch.setenv("SYMPHONY_API_PORT", "9090")
    assert ApiConfig.load().port == 9090
    assert ApiConfig.load(port=0).port == 0
    from symphony.db import ConfigurationError

    for bad in ({"port": 70000}, {"auth_cache_seconds": 6}, {"auth_cache_seconds": -1},
                {"body_limit_bytes": 10}, {"host": "a b"}, {"request_timeout_seconds": 0}):
        with pytest.raises(ConfigurationError) as info:
            ApiConfig.load(**bad)
        assert info.value.code == "INVALID_API_CONFIG"
    monkeypatch.setenv("SYMPHONY_API_PORT", "eighty")
    with pytest.raises(ConfigurationError):
        ApiConfig.load()


async def test_token_cache_is_bounded_in_time() -> None:
    now = [100.0]
    tokens = FakeTokens()
    tokens.add("sy_pt_a", TokenKind.PARTICIPANT, "a")
    cache = CachedAuthenticator(tokens, 0.2, clock=lambda: now[0])
    assert await cache.authenticate("sy_pt_a") is not None
    assert await cache.authenticate("sy_pt_a") is not None
    assert tokens.asked == 1, "second call served from the cache"
    del tokens.tokens["sy_pt_a"]  # revoked
    now[0] += 0.19
    assert await cache.authenticate("sy_pt_a") is not None, "still inside the bound"
    now[0] += 0.02
    assert await cache.authenticate("sy_pt_a") is None, "refused once the bound has passed"
    # Refusals are never cached: a token issued now works at once.
    assert await cache.authenticate("sy_pt_new") is None
    tokens.add("sy_pt_new", TokenKind.PARTICIPANT, "n")
    assert await cache.authenticate("sy_pt_new") is not None
    # ttl 0: every call asks.
    uncached = CachedAuthenticator(tokens, 0)
    asked = tokens.asked
    await uncached.authenticate("sy_pt_new")
    await uncached.authenticate("sy_pt_new")
    assert tokens.asked == asked + 2


async def test_token_cache_size_is_bounded() -> None:
    tokens = FakeTokens()
    for i in range(10):
        tokens.add(f"t{i}", TokenKind.PARTICIPANT, f"p{i}")
    cache = CachedAuthenticator(tokens, 5, max_entries=4)
    for i in range(10):
        await cache.authenticate(f"t{i}")
    assert len(cache._entries) <= 4


async def test_docs_are_served_without_a_cdn(db: Database) -> None:
    async with serve(db) as api:
        page = await api.client.get("/docs")
        assert page.status_code == 200
        html = page.text
        assert "cdn" not in html.lower() and "https://" not in html
        for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
            assert asset in html
            got = await api.client.get(asset)
            assert got.status_code == 200 and len(got.content) > 10_000
        spec = (await api.client.get("/openapi.json")).json()
        assert spec["info"]["title"] == "Symphony Outbox API"


async def test_a_request_past_its_time_limit_is_503_with_retry_after(db: Database) -> None:
    async with serve(db, routers=[probe_router()], request_timeout_seconds=0.2,
                     retry_after_seconds=7) as api:
        response = await api.client.get("/probe/slow")
        assert_envelope(response, 503, "request_timeout")
        assert response.headers["retry-after"] == "7"


async def test_the_database_away_after_authentication_is_503(
    db: Database, tokens: FakeTokens
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = Database(db.settings, None, dsns={
        Principal.API: f"postgresql://{Principal.API.value}:x@127.0.0.1:{port}/x"})
    try:
        async with serve(dead, authenticator=tokens) as api:
            headers = {"Authorization": "Bearer sy_pt_alpha", "Content-Type": "application/json",
                       "Idempotency-Key": "key-0123456789"}
            body = {"instruction_id": "i-1", "rail_type": "SEPA_CT", "amount": "1.00",
                    "currency": "EUR", "destination": "x"}
            posted = await api.client.post("/v1/payments", json=body, headers=headers)
            assert_envelope(posted, 503, "service_unavailable")
            assert posted.headers["retry-after"] == "2"
            listed = await api.client.get("/v1/payments", headers=headers)
            assert_envelope(listed, 503, "service_unavailable")
    finally:
        await dead.close()


def test_connection_limits_have_documented_defaults_and_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from symphony.db import ConfigurationError
    from symphony.http_server import FD_RESERVE, ConnectionLimits, connection_budget

    for name in ("BODY_TIMEOUT_SECONDS", "HEADER_TIMEOUT_SECONDS", "KEEP_ALIVE_SECONDS",
                 "MAX_CONNECTIONS", "MAX_HEADER_BYTES"):
        monkeypatch.delenv(f"SYMPHONY_API_{name}", raising=False)
    config = ApiConfig.load()
    assert (config.body_timeout_seconds, config.header_timeout_seconds,
            config.keep_alive_seconds, config.max_connections, config.max_header_bytes) == (
        10.0, 10.0, 5, 1000, 16384)
    assert config.connection_limits() == ConnectionLimits()
    monkeypatch.setenv("SYMPHONY_API_MAX_CONNECTIONS", "300")
    monkeypatch.setenv("SYMPHONY_API_BODY_TIMEOUT_SECONDS", "2.5")
    assert ApiConfig.load().connection_limits().max_connections == 300
    assert ApiConfig.load().body_timeout_seconds == 2.5
    for bad in ({"body_timeout_seconds": 0}, {"header_timeout_seconds": -1},
                {"keep_alive_seconds": 0}, {"max_connections": 7},
                {"max_connections": 10**6}, {"max_header_bytes": 100}):
        with pytest.raises(ConfigurationError) as info:
            ApiConfig.load(**bad)
        assert info.value.code == "INVALID_API_CONFIG"
        assert next(iter(bad)) in info.value.message
    # Never more connections than the descriptors leave room for.
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        assert connection_budget(10**6) == max(8, soft - FD_RESERVE)
    assert connection_budget(10) <= 10


async def test_a_body_is_read_after_authentication_and_under_a_deadline(
    db: Database, tokens: FakeTokens
) -> None:
    """In-process companion of tests/integration/test_api_slow_clients.py: a stalled body
    without a token is answered 401 at once; with one, 408 at the deadline; both close."""
    async with serve(db, routers=[probe_router()], authenticator=tokens,
                     body_timeout_seconds=0.5) as api:
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        for auth, expected in ((b"", b"HTTP/1.1 401 "),
                               (b"Authorization: Bearer sy_pt_alpha\r\n", b"HTTP/1.1 408 ")):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /probe/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
                         + auth + b"\r\n{")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.startswith(expected), answer
            assert b"connection: close" in answer.lower()
