"""The operator API, /metrics and the dashboard's files over real HTTP (uvicorn on loopback,
the real database, tokens from the database's token store).

Who may read `/v1/ops`: only an operator token. No token, an unknown or revoked token and a
participant's token all get 401 `unauthorized` (require_operator gives one answer for
"these credentials do not open this door").
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.api import Running, serve
from tests.support.ops import database_now, ended_item
from tests.support.outbox import TEST_PARTICIPANT, instruction

from symphony.db import Database, DatabaseSettings, Endpoint, Principal
from symphony.outbox import OutboxStore
from symphony.outbox.access import AccessStore, TokenKind
from symphony.services.api.dashboard import ASSETS, dashboard_router
from symphony.services.api.metrics import metrics_router
from symphony.services.api.ops import ops_router

OPS_PATHS = (
    "/v1/ops/status",
    "/v1/ops/payments/00000000-0000-4000-8000-000000000000",
    "/v1/ops/failures",
    "/v1/ops/throughput",
)


def routers() -> list[Any]:
    return [ops_router(), metrics_router(), dashboard_router()]


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    async with serve(isolated_db, routers=routers(),
                     authenticator=AccessStore(isolated_db)) as running:
        yield running


@pytest.fixture
async def operator(isolated_db: Database) -> dict[str, str]:
    issued = await AccessStore(isolated_db).issue_token(TokenKind.OPERATOR, label="ops test")
    return {"Authorization": f"Bearer {issued.token}"}


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["message"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


# -- who may read --------------------------------------------------------------------------


@pytest.mark.parametrize("path", OPS_PATHS)
async def test_no_token_is_401(api: Running, path: str) -> None:
    response = await api.client.get(path)
    assert_envelope(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", OPS_PATHS)
async def test_a_participant_token_is_401(
    api: Running, isolated_db: Database, path: str
) -> None:
    issued = await AccessStore(isolated_db).issue_token(
        TokenKind.PARTICIPANT, participant_id=TEST_PARTICIPANT)
    response = await api.client.get(path, headers={"Authorization": f"Bearer {issued.token}"})
    assert_envelope(response, 401, "unauthorized")


async def test_a_revoked_operator_token_is_401(api: Running, isolated_db: Database) -> None:
    access = AccessStore(isolated_db)
    issued = await access.issue_token(TokenKind.OPERATOR)
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert (await api.client.get("/v1/ops/status", headers=headers)).status_code == 200
    await access.revoke_token(issued.token_id)
    assert_envelope(await api.client.get("/v1/ops/status", headers=headers), 401, "unauthorized")


# -- what they read -------------------------------------------------------------------------


async def test_status_is_the_supervisor_view(
    api: Running, isolated_db: Database, operator: dict[str, str]
) -> None:
    store = OutboxStore(isolated_db)
    await store.enqueue(instruction())
    response = await api.client.get("/v1/ops/status", headers=operator)
    assert response.status_code == 200
    body = response.json()
    status = await store.status()
    for field in ("due", "scheduled", "dispatching", "zombies", "awaiting_lookup", "under_review",
                  "pending_total", "dispatched_total", "failed_total"):
        assert body[field] == getattr(status, field), field
    assert body["pending_total"] >= 1
    assert body["oldest_pending_age_seconds"] >= 0
    assert body["observed_at"] and body["oldest_pending_at"]


async def test_one_payment_with_its_registry_entry_and_ledger(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, operator: dict[str, str]
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    submitted = instruction()
    outbox_id = await ended_item(store, isolated_admin_dsn, "FAILED", now,
                                 error_code="INSUFFICIENT_FUNDS", error_detail="declined",
                                 submitted=submitted)

    body = (await api.client.get(f"/v1/ops/payments/{outbox_id}", headers=operator)).json()

    assert body["outbox_id"] == str(outbox_id)
    assert body["state"] == "FAILED"
    assert body["terminal_state"] == "FAILED"
    assert body["pending"] is False
    assert body["instruction_id"] == submitted.instruction_id
    assert body["idempotency_key"] == submitted.idempotency_key
    assert body["participant_id"] == submitted.participant_id
    assert body["payload"] == submitted.payload
    assert [(r["attempt_no"], r["state"], r["error_code"]) for r in body["ledger"]] == [
        (1, "DISPATCHING", None), (2, "FAILED", "INSUFFICIENT_FUNDS")]
    assert "lease_token" not in body


async def test_a_pending_payment_has_no_ledger_yet(
    api: Running, isolated_db: Database, operator: dict[str, str]
) -> None:
    enqueued = await OutboxStore(isolated_db).enqueue(instruction())
    body = (await api.client.get(f"/v1/ops/payments/{enqueued.outbox_id}",
                                 headers=operator)).json()
    assert (body["state"], body["pending"], body["ledger"]) == ("PENDING", True, [])


async def test_an_unknown_payment_is_404_and_a_malformed_id_422(
    api: Running, operator: dict[str, str]
) -> None:
    assert_envelope(await api.client.get(
        "/v1/ops/payments/00000000-0000-4000-8000-000000000000", headers=operator),
        404, "not_found")
    response = await api.client.get("/v1/ops/payments/not-a-uuid", headers=operator)
    assert response.status_code == 422
    assert response.json()["request_id"]


async def test_failures_are_newest_first_and_bounded(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, operator: dict[str, str]
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    older = await ended_item(store, isolated_admin_dsn, "FAILED",
                             now + timedelta(days=3), error_code="OLDER")
    newer = await ended_item(store, isolated_admin_dsn, "FAILED",
                             now + timedelta(days=3, minutes=1), error_code="NEWER",
                             error_detail="the rail said no")

    body = (await api.client.get("/v1/ops/failures?limit=2", headers=operator)).json()

    assert body["limit"] == 2
    assert [(i["outbox_id"], i["error_code"]) for i in body["items"]] == [
        (str(newer), "NEWER"), (str(older), "OLDER")]
    assert body["items"][0]["error_detail"] == "the rail said no"
    for bad in ("0", "501", "x"):
        response = await api.client.get(f"/v1/ops/failures?limit={bad}", headers=operator)
        assert response.status_code == 422, bad


async def test_throughput_has_one_bucket_per_minute(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, operator: dict[str, str]
) -> None:
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    await ended_item(store, isolated_admin_dsn, "DISPATCHED", now - timedelta(minutes=2))

    body = (await api.client.get("/v1/ops/throughput?minutes=5", headers=operator)).json()

    assert body["minutes"] == 5
    assert len(body["buckets"]) == 5
    assert sum(b["dispatched"] for b in body["buckets"]) >= 1
    assert [b["minute"] for b in body["buckets"]] == sorted(b["minute"] for b in body["buckets"])
    for bad in ("0", "241"):
        response = await api.client.get(f"/v1/ops/throughput?minutes={bad}", headers=operator)
        assert response.status_code == 422, bad


async def test_the_default_windows(api: Running, operator: dict[str, str]) -> None:
    failures = (await api.client.get("/v1/ops/failures", headers=operator)).json()
    throughput = (await api.client.get("/v1/ops/throughput", headers=operator)).json()
    assert failures["limit"] == 50
    assert throughput["minutes"] == 30 and len(throughput["buckets"]) == 30


# -- /metrics, the dashboard's files, a database that is down --------------------------------


async def test_metrics_need_no_token_and_show_no_item(
    api: Running, isolated_db: Database
) -> None:
    enqueued = await OutboxStore(isolated_db).enqueue(instruction())
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {s.name for f in text_string_to_metric_families(response.text) for s in f.samples}
    assert {"symphony_outbox_up", "symphony_outbox_queue_items",
            "symphony_outbox_ledger_rows_total",
            "symphony_outbox_oldest_pending_age_seconds"} <= names
    # This process runs no worker: no worker numbers are invented.
    assert not any(n.startswith("symphony_worker_") for n in names)
    assert str(enqueued.outbox_id) not in response.text
    assert TEST_PARTICIPANT not in response.text


async def test_the_dashboard_page_is_served_without_a_token(api: Running) -> None:
    response = await api.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    html = response.text
    # Every asset the page names is served from here, and nothing from anywhere else.
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert referenced, html
    for url in referenced:
        assert url.startswith("/static/"), url
        asset = await api.client.get(url)
        assert asset.status_code == 200, url
    assert {u.removeprefix("/static/") for u in referenced} <= set(ASSETS)
    assert "http://" not in html and "https://" not in html


async def test_only_the_dashboards_own_files_are_served(api: Running) -> None:
    for path in ("/static/index.html.bak", "/static/..%2Fops.py", "/static/%2e%2e/metrics.py"):
        assert (await api.client.get(path)).status_code == 404, path


@pytest.fixture
async def down_db() -> AsyncIterator[Database]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = Database(
        DatabaseSettings(SYMPHONY_DB_CONNECT_TIMEOUT_S=1),
        Endpoint(admin_dsn=f"host=127.0.0.1 port={port} dbname=none user=none",
                 server_key="down", embedded=False),
        {p: "unused" for p in Principal},
    )
    try:
        yield db
    finally:
        await db.close()


async def test_a_database_that_is_down_is_a_503_not_a_number(down_db: Database) -> None:
    async with serve(down_db, routers=routers(), authenticator=AccessStore(down_db)) as api:
        response = await api.client.get(
            "/v1/ops/status", headers={"Authorization": "Bearer sy_op_" + "0" * 32 + "_" + "A" * 43})
        assert response.status_code == 503
        assert response.json()["code"] == "service_unavailable"
        assert response.headers["Retry-After"]
        metrics = await api.client.get("/metrics")
        assert metrics.status_code == 200
        assert "symphony_outbox_up 0.0" in metrics.text
        assert "symphony_outbox_queue_items" not in metrics.text
        assert (await api.client.get("/readyz")).status_code == 503
        assert (await api.client.get("/healthz")).status_code == 200
