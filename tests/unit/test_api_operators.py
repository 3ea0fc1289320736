"""The operator API's browse, fleet, participant view and scoped actions over real HTTP.

A viewer token reads everything and acts on nothing: every action answers it 403
`insufficient_scope` and writes nothing (row counts of every table, before and after). An
operator token acts, is named in the item's history, and an action that lost a race answers
409 with where the thing stands now.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support.api import Running, new_member, row_counts, serve
from tests.support.ops import database_now, put_under_review

from symphony.db import Database, test_only
from symphony.outbox import AccessStore, OutboxStore, TokenKind, TokenScope
from symphony.outbox.model import BucketRange
from symphony.outbox.operators import Heartbeat, OperatorStore
from symphony.services.api.ops import operator_routers


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    async with serve(isolated_db, routers=operator_routers(),
                     authenticator=AccessStore(isolated_db)) as running:
        yield running


async def _headers(db: Database, scope: TokenScope, label: str) -> dict[str, str]:
    issued = await AccessStore(db).issue_token(TokenKind.OPERATOR, label=label, scope=scope)
    return {"Authorization": f"Bearer {issued.token}"}


@pytest.fixture
async def viewer(isolated_db: Database) -> dict[str, str]:
    return await _headers(isolated_db, TokenScope.VIEWER, "viewer vera")


@pytest.fixture
async def operator(isolated_db: Database) -> dict[str, str]:
    return await _headers(isolated_db, TokenScope.OPERATOR, "operator otto")


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["message"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


async def _actions(api: Running, db: Database, admin_dsn: str) -> list[tuple[str, dict[str, Any]]]:
    """Every action, with a body that would succeed for an operator."""
    store = OutboxStore(db)
    review = await put_under_review(store, admin_dsn)
    member = await new_member(db)
    target = await AccessStore(db).issue_token(TokenKind.OPERATOR, label="target")
    return [
        (f"/v1/ops/payments/{review}/resolve",
         {"outcome": "FAILED", "reason": "the rail confirms no debit"}),
        (f"/v1/ops/participants/{member.participant_id}/revoke", {"reason": "offboarded"}),
        (f"/v1/ops/tokens/{target.token_id}/revoke", {"reason": "rotated"}),
    ]


async def test_whoami_says_the_scope(
    api: Running, viewer: dict[str, str], operator: dict[str, str]
) -> None:
    seen = (await api.client.get("/v1/ops/whoami", headers=viewer)).json()
    assert (seen["scope"], seen["may_act"], seen["label"]) == ("VIEWER", False, "viewer vera")
    seen = (await api.client.get("/v1/ops/whoami", headers=operator)).json()
    assert (seen["scope"], seen["may_act"]) == ("OPERATOR", True)


async def test_a_viewer_token_reads_but_every_action_is_403_and_writes_nothing(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, viewer: dict[str, str]
) -> None:
    actions = await _actions(api, isolated_db, isolated_admin_dsn)
    for path in ("/v1/ops/payments", "/v1/ops/fleet", "/v1/ops/tokens", "/v1/ops/status"):
        assert (await api.client.get(path, headers=viewer)).status_code == 200, path
    before = await row_counts(isolated_admin_dsn)
    ops_before = await test_only.query_no_role(
        isolated_admin_dsn, "SELECT count(*) AS n FROM symphony_ops.operator_actions")
    for path, body in actions:
        envelope(await api.client.post(path, json=body, headers=viewer), 403,
                 "insufficient_scope")
    assert await row_counts(isolated_admin_dsn) == before
    assert await test_only.query_no_role(
        isolated_admin_dsn,
        "SELECT count(*) AS n FROM symphony_ops.operator_actions") == ops_before


async def test_no_token_and_a_participant_token_are_401_on_actions(
    api: Running, isolated_db: Database, isolated_admin_dsn: str
) -> None:
    member = await new_member(isolated_db)
    for path, body in await _actions(api, isolated_db, isolated_admin_dsn):
        envelope(await api.client.post(path, json=body), 401, "unauthorized")
        envelope(await api.client.post(path, json=body, headers=member.headers()), 401,
                 "unauthorized")


async def test_an_operator_resolves_and_the_history_names_the_token(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, operator: dict[str, str],
    viewer: dict[str, str],
) -> None:
    outbox_id = await put_under_review(OutboxStore(isolated_db), isolated_admin_dsn)
    response = await api.client.post(
        f"/v1/ops/payments/{outbox_id}/resolve", headers=operator,
        json={"outcome": "DISPATCHED", "reason": "rail statement line 88",
              "rail_transaction_id": "RTX-88"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "DISPATCHED"
    item = (await api.client.get(f"/v1/ops/payments/{outbox_id}", headers=viewer)).json()
    assert item["state"] == "DISPATCHED"
    [action] = item["actions"]
    assert (action["action"], action["actor_label"], action["reason"]) == (
        "RESOLVE_REVIEW", "operator otto", "rail statement line 88")
    whoami = (await api.client.get("/v1/ops/whoami", headers=operator)).json()
    assert action["actor_token_id"] == whoami["token_id"]
    # Again: the item moved on. 409 with where it stands now, and nothing more recorded.
    again = await api.client.post(
        f"/v1/ops/payments/{outbox_id}/resolve", headers=operator,
        json={"outcome": "FAILED", "reason": "second try"})
    body = envelope(again, 409, "not_under_review")
    assert body["current"] == {"outbox_id": str(outbox_id), "state": "DISPATCHED",
                               "under_review": False}
    item = (await api.client.get(f"/v1/ops/payments/{outbox_id}", headers=viewer)).json()
    assert len(item["actions"]) == 1


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"outcome": "DISPATCHED", "reason": "no tx id"}, 422, "invalid_request"),
    ({"outcome": "RETRY", "reason": "x"}, 422, "invalid_request"),
    ({"outcome": "FAILED"}, 422, "invalid_request"),
    ({"outcome": "FAILED", "reason": "x", "extra": 1}, 422, "invalid_request"),
    ({"outcome": "FAILED", "reason": "tab\tinside"}, 422, "invalid_request"),
])
async def test_a_bad_resolve_is_refused_and_writes_nothing(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, operator: dict[str, str],
    body: dict[str, Any], status: int, code: str,
) -> None:
    outbox_id = await put_under_review(OutboxStore(isolated_db), isolated_admin_dsn)
    before = await row_counts(isolated_admin_dsn)
    envelope(await api.client.post(f"/v1/ops/payments/{outbox_id}/resolve", json=body,
                                   headers=operator), status, code)
    assert await row_counts(isolated_admin_dsn) == before


async def test_resolving_an_unknown_item_is_404(api: Running, operator: dict[str, str]) -> None:
    envelope(await api.client.post(
        "/v1/ops/payments/00000000-0000-4000-8000-000000000000/resolve", headers=operator,
        json={"outcome": "FAILED", "reason": "x"}), 404, "not_found")


async def test_revoking_twice_is_409_with_the_current_state(
    api: Running, isolated_db: Database, operator: dict[str, str]
) -> None:
    member = await new_member(isolated_db)
    path = f"/v1/ops/participants/{member.participant_id}/revoke"
    first = await api.client.post(path, json={"reason": "offboarded"}, headers=operator)
    assert first.status_code == 200 and first.json()["status"] == "REVOKED"
    body = envelope(await api.client.post(path, json={"reason": "x"}, headers=operator), 409,
                    "already_revoked")
    assert body["current"]["status"] == "REVOKED"
    summary = (await api.client.get(f"/v1/ops/participants/{member.participant_id}",
                                    headers=operator)).json()
    assert summary["status"] == "REVOKED"
    assert [a["action"] for a in summary["actions"]] == ["REVOKE_PARTICIPANT"]


async def test_revoking_a_token_from_the_list(
    api: Running, isolated_db: Database, operator: dict[str, str]
) -> None:
    target = await AccessStore(isolated_db).issue_token(TokenKind.OPERATOR, label="old laptop")
    listed = (await api.client.get("/v1/ops/tokens", headers=operator)).json()["data"]
    row = next(t for t in listed if t["token_id"] == str(target.token_id))
    assert row["scope"] == "VIEWER" and row["revoked_at"] is None
    assert "secret" not in str(row).lower() or "secret_hash" not in row
    path = f"/v1/ops/tokens/{target.token_id}/revoke"
    assert (await api.client.post(path, json={"reason": "lost"}, headers=operator)
            ).status_code == 200
    envelope(await api.client.post(path, json={"reason": "lost"}, headers=operator), 409,
             "already_revoked")


async def test_browse_filters_and_pages(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, viewer: dict[str, str]
) -> None:
    member = await new_member(isolated_db)
    store = OutboxStore(isolated_db)
    review = await put_under_review(store, isolated_admin_dsn,
                                    participant_id=member.participant_id)
    from tests.support.outbox import instruction
    for _ in range(3):
        await store.enqueue(instruction(participant_id=member.participant_id))
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"participant": member.participant_id, "limit": 2}
        if after:
            params["after"] = after
        page = (await api.client.get("/v1/ops/payments", params=params, headers=viewer)).json()
        seen += [i["outbox_id"] for i in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_after"]
    assert len(seen) == 4 and len(set(seen)) == 4
    reviews = (await api.client.get("/v1/ops/payments", headers=viewer, params={
        "state": "REVIEW", "participant": member.participant_id})).json()["data"]
    assert [(r["outbox_id"], r["state"]) for r in reviews] == [(str(review), "REVIEW")]
    envelope(await api.client.get("/v1/ops/payments", params={"state": "NOPE"},
                                  headers=viewer), 422, "invalid_request")
    envelope(await api.client.get("/v1/ops/payments", params={"after": "garbage!"},
                                  headers=viewer), 422, "invalid_request")
    envelope(await api.client.get("/v1/ops/payments", params={"participant": "<b>x"},
                                  headers=viewer), 422, "invalid_request")


async def test_participant_view_and_404(
    api: Running, isolated_db: Database, viewer: dict[str, str]
) -> None:
    member = await new_member(isolated_db)
    body = (await api.client.get(f"/v1/ops/participants/{member.participant_id}",
                                 headers=viewer)).json()
    assert body["pending_total"] == 0 and body["failure_rate_last_hour"] is None
    envelope(await api.client.get("/v1/ops/participants/nobody-here", headers=viewer), 404,
             "not_found")


async def test_status_and_fleet_show_an_uncovered_bucket(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, viewer: dict[str, str]
) -> None:
    await test_only.query_no_role(isolated_admin_dsn,
                                  "DELETE FROM symphony_ops.worker_heartbeats")
    now = await database_now(isolated_admin_dsn)
    ops = OperatorStore(isolated_db)
    for worker_id, first, last in (("api-w1", 0, 99), ("api-w2", 110, 255)):
        await ops.heartbeat(Heartbeat(worker_id, BucketRange(first, last), "9.9", now, now, 0))
    status = (await api.client.get("/v1/ops/status", headers=viewer)).json()
    assert status["fleet"]["alert"] is True
    assert status["fleet"]["uncovered_buckets"] == [{"bucket_from": 100, "bucket_to": 109}]
    fleet = (await api.client.get("/v1/ops/fleet", headers=viewer)).json()
    assert {w["worker_id"] for w in fleet["workers"]} == {"api-w1", "api-w2"}
    assert fleet["live_workers"] == 2 and fleet["uncovered_bucket_count"] == 10
