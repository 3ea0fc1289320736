"""Webhook endpoints over real HTTP: the secret shown once and never again, participant
scoping (another participant's endpoint is 404), URL refusals by code with nothing written,
rotation with an overlap, deletion, and the operator's list, disable/enable and replay."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support.api import Member, Running, new_member, operator_token, row_counts, serve
from tests.support.webhooks import LOOPBACK, admin, box_of, pay

from symphony.db import Database
from symphony.outbox.access import AccessStore, TokenKind, TokenScope
from symphony.services.api.webhooks import (
    webhook_health_router,
    webhook_ops_router,
    webhook_routers,
)
from symphony.webhooks import UrlPolicy, WebhookStore

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    routers = [*webhook_routers(box_of(isolated_db), LOOPBACK), webhook_health_router(),
               webhook_ops_router()]
    async with serve(isolated_db, routers=routers) as r:
        yield r


@pytest.fixture
async def strict_api(isolated_db: Database) -> AsyncIterator[Running]:
    async with serve(isolated_db, routers=webhook_routers(box_of(isolated_db), UrlPolicy())) as r:
        yield r


@pytest.fixture
async def alice(isolated_db: Database) -> Member:
    return await new_member(isolated_db, "alice")


@pytest.fixture
async def bob(isolated_db: Database) -> Member:
    return await new_member(isolated_db, "bob")


def body(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"url": "http://127.0.0.1:9/hooks",
                             "event_types": ["payment.created", "payment.failed"]}
    value.update(overrides)
    return value


async def create(api: Running, member: Member, **overrides: Any) -> httpx.Response:
    return await api.client.post("/v1/webhook_endpoints", content=json.dumps(body(**overrides)),
                                 headers={**member.headers(), **JSON})


async def test_create_shows_the_secret_once_and_never_again(
    isolated_db: Database, api: Running, alice: Member
) -> None:
    made = await create(api, alice, description="ledger sync")
    assert made.status_code == 201, made.text
    created = made.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) == 50
    assert made.headers["location"] == f"/v1/webhook_endpoints/{created['id']}"
    assert made.headers["cache-control"] == "no-store"
    listed = await api.client.get("/v1/webhook_endpoints", headers=alice.headers())
    assert listed.status_code == 200
    [view] = listed.json()["data"]
    assert view["id"] == created["id"] and view["description"] == "ledger sync"
    assert view["live_secrets"] == 1 and view["failing"] is False
    assert created["secret"] not in listed.text and "secret\"" not in listed.text
    # The database keeps only a sealed form: the secret's bytes are nowhere in it.
    rows = await admin(isolated_db, "SELECT secret_ciphertext FROM "
                                    "symphony.webhook_endpoint_secrets WHERE endpoint_id = %s",
                       (created["id"],))
    import base64
    raw = base64.b64decode(created["secret"][len("whsec_"):])
    assert raw not in bytes(rows[0]["secret_ciphertext"])


async def test_another_participants_endpoint_is_not_found(
    api: Running, alice: Member, bob: Member
) -> None:
    created = (await create(api, alice)).json()
    listed = await api.client.get("/v1/webhook_endpoints", headers=bob.headers())
    assert listed.json()["data"] == []
    for method, path in (("DELETE", f"/v1/webhook_endpoints/{created['id']}"),
                         ("POST", f"/v1/webhook_endpoints/{created['id']}/rotate_secret")):
        answer = await api.client.request(method, path, headers=bob.headers())
        assert answer.status_code == 404, answer.text
        assert answer.json()["code"] == "not_found"
    still = await api.client.get("/v1/webhook_endpoints", headers=alice.headers())
    assert [e["id"] for e in still.json()["data"]] == [created["id"]]


@pytest.mark.parametrize(("url", "code"), [
    ("http://hooks.example.com/x", "url_scheme_not_allowed"),
    ("https://10.1.2.3/x", "address_private"),
    ("https://169.254.169.254/latest/meta-data", "address_metadata"),
    ("https://100.64.0.1/x", "address_cgnat"),
    ("https://[fd00::1]/x", "address_unique_local"),
    ("https://[::ffff:127.0.0.1]/x", "address_loopback"),
    ("https://127.0.0.1/x", "address_loopback"),
    ("https://user:pw@hooks.example.com/x", "url_has_credentials"),
])
async def test_unsafe_urls_are_refused_with_their_code_and_nothing_written(
    isolated_db: Database, strict_api: Running, alice: Member, url: str, code: str
) -> None:
    before = await row_counts(isolated_db.endpoint.admin_dsn)  # type: ignore[union-attr]
    answer = await create(strict_api, alice, url=url)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"] == [
        {"field": "url", "code": code, "message": answer.json()["errors"][0]["message"]}]
    assert await row_counts(isolated_db.endpoint.admin_dsn) == before  # type: ignore[union-attr]


@pytest.mark.parametrize(("overrides", "field", "code"), [
    ({"event_types": ["payment.teleported"]}, "event_types", "INVALID_EVENT_TYPES"),
    ({"event_types": ["payment.created", "payment.created"]}, "event_types",
     "INVALID_EVENT_TYPES"),
    ({"event_types": []}, "event_types", "INVALID_TYPE"),
    ({"description": "a\u202eb"}, "description", "INVALID_DESCRIPTION"),
    ({"secret": "whsec_mine"}, "secret", "UNKNOWN_FIELD"),
    ({"url": 5}, "url", "INVALID_TYPE"),
])
async def test_bad_fields_are_refused_with_codes(
    api: Running, alice: Member, overrides: dict[str, Any], field: str, code: str
) -> None:
    answer = await create(api, alice, **overrides)
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert (errors[0]["field"], errors[0]["code"]) == (field, code) or (
        code == "INVALID_TYPE" and errors[0]["field"] == field), errors


async def test_at_most_sixteen_endpoints(api: Running, alice: Member) -> None:
    for _ in range(16):
        assert (await create(api, alice)).status_code == 201
    answer = await create(api, alice)
    assert answer.status_code == 409 and answer.json()["code"] == "too_many_webhook_endpoints"


async def test_rotation_answers_a_new_secret_and_both_stay_live_for_the_overlap(
    api: Running, alice: Member
) -> None:
    created = (await create(api, alice)).json()
    rotated = await api.client.post(
        f"/v1/webhook_endpoints/{created['id']}/rotate_secret",
        content=json.dumps({"overlap_seconds": 600}), headers={**alice.headers(), **JSON})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["secret"].startswith("whsec_") and new["secret"] != created["secret"]
    [view] = (await api.client.get("/v1/webhook_endpoints", headers=alice.headers())).json()[
        "data"]
    assert view["live_secrets"] == 2
    bad = await api.client.post(
        f"/v1/webhook_endpoints/{created['id']}/rotate_secret",
        content=json.dumps({"overlap_seconds": 10**9}), headers={**alice.headers(), **JSON})
    assert bad.status_code == 422
    # No overlap: the old secret ends at once.
    await api.client.post(
        f"/v1/webhook_endpoints/{created['id']}/rotate_secret",
        content=json.dumps({"overlap_seconds": 0}), headers={**alice.headers(), **JSON})
    [view] = (await api.client.get("/v1/webhook_endpoints", headers=alice.headers())).json()[
        "data"]
    assert view["live_secrets"] == 1


async def test_delete_abandons_pending_deliveries_and_is_404_afterwards(
    isolated_db: Database, api: Running, alice: Member
) -> None:
    created = (await create(api, alice)).json()
    await pay(isolated_db, alice.participant_id, 2)
    await WebhookStore(isolated_db).fan_out(1000, 1000)
    gone = await api.client.delete(f"/v1/webhook_endpoints/{created['id']}",
                                   headers=alice.headers())
    assert gone.status_code == 200 and gone.json()["abandoned_deliveries"] >= 2
    again = await api.client.delete(f"/v1/webhook_endpoints/{created['id']}",
                                    headers=alice.headers())
    assert again.status_code == 404
    listed = await api.client.get("/v1/webhook_endpoints", headers=alice.headers())
    assert listed.json()["data"] == []


async def test_participant_routes_need_a_participant_token(
    isolated_db: Database, api: Running
) -> None:
    assert (await api.client.get("/v1/webhook_endpoints")).status_code == 401
    op = await operator_token(isolated_db)
    answer = await api.client.get("/v1/webhook_endpoints",
                                  headers={"Authorization": f"Bearer {op}"})
    assert answer.status_code == 401


async def test_the_operator_lists_disables_enables_and_replays(
    isolated_db: Database, api: Running, alice: Member
) -> None:
    created = (await create(api, alice)).json()
    await pay(isolated_db, alice.participant_id)
    await WebhookStore(isolated_db).fan_out(1000, 1000)
    viewer = {"Authorization": f"Bearer {await operator_token(isolated_db)}"}
    acting = await AccessStore(isolated_db).issue_token(
        TokenKind.OPERATOR, label="webhook operator", scope=TokenScope.OPERATOR)
    op = {"Authorization": f"Bearer {acting.token}"}
    # A VIEWER token reads but may not act.
    assert (await api.client.get("/v1/ops/webhook_endpoints", headers=viewer)).status_code == 200
    refused = await api.client.post(f"/v1/ops/webhook_endpoints/{created['id']}/disable",
                                    content=json.dumps({"reason": "x"}),
                                    headers={**viewer, **JSON})
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
    listed = await api.client.get("/v1/ops/webhook_endpoints", headers=op)
    assert listed.status_code == 200
    assert created["id"] in {e["id"] for e in listed.json()["data"]}
    assert "secret" not in listed.text
    health = await api.client.get("/v1/ops/webhook_health", headers=op)
    assert health.status_code == 200 and health.json()["endpoints_enabled"] >= 1
    off = await api.client.post(f"/v1/ops/webhook_endpoints/{created['id']}/disable",
                                content=json.dumps({"reason": "receiver down"}),
                                headers={**op, **JSON})
    assert off.status_code == 200 and off.json()["status"] == "DISABLED"
    no_reason = await api.client.post(f"/v1/ops/webhook_endpoints/{created['id']}/enable",
                                      content=json.dumps({}), headers={**op, **JSON})
    assert no_reason.status_code == 422
    on = await api.client.post(f"/v1/ops/webhook_endpoints/{created['id']}/enable",
                               content=json.dumps({"reason": "fixed"}), headers={**op, **JSON})
    assert on.json()["status"] == "ENABLED"
    deliveries = await api.client.get(
        f"/v1/ops/webhook_endpoints/{created['id']}/deliveries", headers=op)
    [delivery] = deliveries.json()["data"]
    path = f"/v1/ops/webhook_deliveries/{delivery['delivery_id']}/replay"
    why = json.dumps({"reason": "receiver fixed"})
    not_yours = await api.client.post(path, content=why, headers={**viewer, **JSON})
    assert not_yours.status_code == 403 and not_yours.json()["code"] == "insufficient_scope"
    no_reason = await api.client.post(path, content=json.dumps({}), headers={**op, **JSON})
    assert no_reason.status_code == 422
    assert (await api.client.post(path, headers=op)).status_code == 415
    replay = await api.client.post(path, content=why, headers={**op, **JSON})
    assert replay.status_code == 201, replay.text
    assert replay.json()["result"] == "REPLAYED" and replay.json()["action_id"] >= 1
    assert replay.json()["event_id"] == delivery["event_id"]
    assert replay.json()["replay_of"] == delivery["delivery_id"]
    # A second replay while the first still waits lost the race: 409 with the waiting one.
    again = await api.client.post(path, content=why, headers={**op, **JSON})
    assert again.status_code == 409 and again.json()["code"] == "replay_pending"
    assert again.json()["current"]["delivery_id"] == replay.json()["delivery_id"]
    assert again.json()["current"]["status"] == "PENDING"
    [action] = await admin(isolated_db, "SELECT * FROM symphony_ops.operator_actions "
                                        "WHERE target = %s", (delivery["delivery_id"],))
    assert (action["action"], action["actor_label"], action["reason"]) == (
        "REPLAY_WEBHOOK_DELIVERY", "webhook operator", "receiver fixed")
    assert str(action["actor_token_id"]) == str(acting.token_id)
    unknown = await api.client.post(
        "/v1/ops/webhook_deliveries/00000000-0000-0000-0000-000000000000/replay", content=why,
        headers={**op, **JSON})
    assert unknown.status_code == 404
    # The endpoint deleted meanwhile: 409 with where it stands, nothing queued.
    await api.client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=alice.headers())
    gone = await api.client.post(path, content=why, headers={**op, **JSON})
    assert gone.status_code == 409 and gone.json()["code"] == "webhook_endpoint_deleted"
    assert gone.json()["current"]["endpoint_status"] == "DELETED"
    # Participant tokens do not open the operator routes.
    assert (await api.client.get("/v1/ops/webhook_endpoints",
                                 headers=alice.headers())).status_code == 401
