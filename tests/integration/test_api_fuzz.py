"""Schema-driven fuzzing of the HTTP API from its own `/openapi.json` (schemathesis, on
hypothesis): valid and invalid requests to every operation (participant and operator API, health,
metrics), most with a valid token of the kind the route wants. Whatever comes in, the API answers without a 5xx, every error is the envelope with the
response's request id, and a refused request leaves every table of the database as it was.

The server runs in a thread of its own (its own event loop and database handle), so the
synchronous fuzz cases can call it over real HTTP on a loopback port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from tests.support.api import new_member, operator_token, row_counts
from tests.support.database import DatabaseFactory, admin_dsn_of

from symphony.db import Database, DatabaseSettings
from symphony.services.api import ApiConfig, ApiServer, create_app
from symphony.services.system.api import build_api_server, product_routers

# Ten operations x this many cases each (positive and negative): some 30-40 s.
EXAMPLES_PER_OPERATION = 100

pytestmark = pytest.mark.integration


@dataclass
class FuzzTarget:
    url: str
    token: str
    operator_token: str
    admin_dsn: str

    def counts(self) -> dict[str, int]:
        return asyncio.run(row_counts(self.admin_dsn))


class _ServerThread(threading.Thread):
    """Runs the API on its own loop until told to stop."""

    def __init__(self, settings: DatabaseSettings) -> None:
        super().__init__(name="fuzz-api", daemon=True)
        self.settings = settings
        self.ready = threading.Event()
        self.url = ""
        self.token = ""
        self.operator_token = ""
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            async with await Database.open(self.settings) as db:
                member = await new_member(db, "fuzz")
                self.token = member.token
                self.operator_token = await operator_token(db)
                server: ApiServer = build_api_server(
                    db, ApiConfig(host="127.0.0.1", port=0, auth_cache_seconds=0))
                await server.start()
                self.url = server.url
                self.ready.set()
                try:
                    await self._stopping.wait()
                finally:
                    await server.stop()
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            raise

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout=30)


@pytest.fixture(scope="module")
def fuzz_target(make_database: DatabaseFactory) -> Iterator[FuzzTarget]:
    settings = make_database()
    thread = _ServerThread(settings)
    thread.start()
    assert thread.ready.wait(60), "the API did not start"
    if thread.error is not None:
        raise thread.error
    try:
        yield FuzzTarget(thread.url, thread.token, thread.operator_token, admin_dsn_of(settings))
    finally:
        thread.stop()


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document, built without a connection (creating the app opens none)."""
    offline = Database(DatabaseSettings(), None)
    return create_app(offline, ApiConfig(port=0), routers=product_routers()).openapi()


SPEC = _openapi()
schema = schemathesis.openapi.from_dict(SPEC)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    database="none",
)


def test_the_fuzzed_document_is_the_served_one(fuzz_target: FuzzTarget) -> None:
    served = httpx.get(f"{fuzz_target.url}/openapi.json", trust_env=False).json()
    assert served == SPEC


_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


@schema.parametrize()
def test_no_input_makes_a_5xx_or_leaves_a_trace(case: Any, fuzz_target: FuzzTarget) -> None:
    # Message framing is the HTTP client's, not API input: a generated Content-Length or
    # Transfer-Encoding makes a request the server's HTTP parser refuses (400) before any
    # application code, and so before any request id, could see it.
    if case.headers:
        case.headers = {name: value for name, value in case.headers.items()
                        if name.lower() not in _FRAMING_HEADERS}
    generated = dict(case.headers or {})
    headers: dict[str, str] = {}
    # Mostly a valid token of the kind the route wants, so the cases reach the handlers;
    # sometimes whatever was generated.
    if "Authorization" not in generated or len(str(generated["Authorization"])) % 4:
        token = (fuzz_target.operator_token if case.path.startswith("/v1/ops")
                 else fuzz_target.token)
        headers["Authorization"] = f"Bearer {token}"
    before = fuzz_target.counts()
    response = case.call(base_url=fuzz_target.url, headers=headers, timeout=30)
    assert response.status_code < 500, (response.status_code, response.text[:500])
    request_id = _header(response.headers, "x-request-id")
    assert request_id, "every response carries X-Request-Id"
    if response.status_code >= 400:
        body = response.json()
        assert {"code", "message", "request_id"} <= set(body), body
        assert body["request_id"] == request_id
        assert fuzz_target.counts() == before, "a refused request changed the database"


def _header(headers: Any, name: str) -> str | None:
    """One header of a schemathesis response (whose values are lists)."""
    for key, value in dict(headers).items():
        if key.lower() == name:
            return str(value[0] if isinstance(value, list) else value)
    return None
