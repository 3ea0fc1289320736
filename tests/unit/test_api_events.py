"""GET /v1/events and the cancel routes over real HTTP against the real database: the caller's
own events by cursor, each carrying the payment exactly as GET /v1/payments/{id} showed it at
that moment; a participant's and an operator's cancel, 409 with the current state, 404 for
someone else's payment; bad parameters in the house's error envelope; all in the OpenAPI
document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from tests.support.api import Member, Running, new_member, operator_token, payment_body, serve

from symphony.db import Database
from symphony.outbox import AccessStore, Completion, OutboxStore, Outcome, TokenKind, TokenScope
from symphony.services.api.ops import operator_routers


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    async with serve(isolated_db) as running:
        yield running


@pytest.fixture
async def alice(isolated_db: Database) -> Member:
    return await new_member(isolated_db, "alice")


@pytest.fixture
async def bob(isolated_db: Database) -> Member:
    return await new_member(isolated_db, "bob")


async def pay(api: Running, member: Member) -> str:
    response = await api.client.post(
        "/v1/payments", content=json.dumps(payment_body()),
        headers={**member.headers(f"key-{uuid4()}"), "Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    return str(response.json()["outbox_id"])


async def events(api: Running, member: Member, **params: Any) -> httpx.Response:
    return await api.client.get("/v1/events", params=params, headers=member.headers())


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_each_event_carries_the_payment_as_get_showed_it(
    api: Running, alice: Member, isolated_db: Database
) -> None:
    outbox_id = await pay(api, alice)
    at_creation = (await api.client.get(f"/v1/payments/{outbox_id}",
                                        headers=alice.headers())).json()
    store = OutboxStore(isolated_db)
    claimed = [c for c in await store.claim("w-events", 1000, 60)
               if str(c.outbox_id) == outbox_id]
    await store.complete(Completion(UUID(outbox_id), claimed[0].lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-42"))
    at_dispatch = (await api.client.get(f"/v1/payments/{outbox_id}",
                                        headers=alice.headers())).json()

    response = await events(api, alice)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    page = response.json()
    assert [(e["sequence"], e["type"]) for e in page["data"]] == [
        (1, "payment.created"), (2, "payment.dispatched")]
    assert page["data"][0]["data"]["object"] == at_creation
    assert page["data"][1]["data"]["object"] == at_dispatch
    assert page["has_more"] is False and page["next_after"] == 2
    for event in page["data"]:
        assert event["id"].startswith("evt_") and len(event["id"]) == 36


async def test_pages_follow_the_cursor_and_the_type_filter(api: Running, alice: Member) -> None:
    ids = [await pay(api, alice) for _ in range(5)]
    first = (await events(api, alice, limit=2)).json()
    assert [e["sequence"] for e in first["data"]] == [1, 2] and first["has_more"] is True
    second = (await events(api, alice, limit=2, after=first["next_after"])).json()
    assert [e["sequence"] for e in second["data"]] == [3, 4]
    rest = (await events(api, alice, after=second["next_after"])).json()
    assert [e["data"]["object"]["outbox_id"] for e in rest["data"]] == ids[4:]
    assert rest["has_more"] is False
    # Nothing new: polling again from the end answers an empty page and the same cursor.
    empty = (await events(api, alice, after=rest["next_after"])).json()
    assert empty == {"data": [], "has_more": False, "next_after": 5}
    only = (await events(api, alice, type="payment.dispatched")).json()
    assert only["data"] == []
    created = (await events(api, alice, type="payment.created", limit=100)).json()
    assert len(created["data"]) == 5


async def test_a_participant_sees_only_its_own_events(
    api: Running, alice: Member, bob: Member
) -> None:
    await pay(api, alice)
    bobs = await pay(api, bob)
    page = (await events(api, bob)).json()
    assert [e["data"]["object"]["outbox_id"] for e in page["data"]] == [bobs]
    assert [e["sequence"] for e in page["data"]] == [1], "numbered per participant"


@pytest.mark.parametrize("params", [
    {"type": "payment.unknown"}, {"after": "-1"}, {"after": "x"}, {"limit": "0"},
    {"limit": "101"},
])
async def test_bad_parameters_are_422_in_the_envelope(
    api: Running, alice: Member, params: dict[str, str]
) -> None:
    envelope(await events(api, alice, **params), 422, "invalid_request")


async def test_events_need_a_participant_token(api: Running, isolated_db: Database) -> None:
    envelope(await api.client.get("/v1/events"), 401, "unauthorized")
    operator = {"Authorization": f"Bearer {await operator_token(isolated_db)}"}
    envelope(await api.client.get("/v1/events", headers=operator), 401, "unauthorized")


async def test_the_openapi_document_describes_the_feed(api: Running) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/events"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"after", "limit", "type"}
    assert set(operation["responses"]) >= {"200", "401", "422"}
    event = spec["components"]["schemas"]["Event"]
    assert set(event["properties"]) == {"id", "type", "sequence", "created_at", "data"}
    types = spec["components"]["schemas"]["EventType"]["enum"]
    assert set(types) == {"payment.created", "payment.dispatched", "payment.failed",
                          "payment.canceled", "payment.under_review"}


# -- cancellation over HTTP -----------------------------------------------------------------------


async def cancel(api: Running, member: Member, outbox_id: str, body: Any = None,
                 **headers: str) -> httpx.Response:
    content = None if body is None else json.dumps(body)
    extra = {"Content-Type": "application/json"} if body is not None else {}
    return await api.client.post(f"/v1/payments/{outbox_id}/cancel", content=content,
                                 headers={**member.headers(), **extra, **headers})


async def test_a_participant_cancels_and_sees_the_canceled_payment(
    api: Running, alice: Member
) -> None:
    outbox_id = await pay(api, alice)
    response = await cancel(api, alice, outbox_id, {"reason": "sent twice"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "CANCELED" and body["terminal_at"] is not None
    assert body["last_error_code"] == "CANCELED_BY_PARTICIPANT"
    assert [a["state"] for a in body["attempts"]] == ["CANCELED"]
    assert body["attempts"][0]["error_detail"] == "sent twice"
    got = (await api.client.get(f"/v1/payments/{outbox_id}", headers=alice.headers())).json()
    assert got == body
    again = await cancel(api, alice, outbox_id)  # no body: no reason
    assert again.status_code == 200 and again.json() == body, "idempotent"
    listed = (await api.client.get("/v1/payments", params={"state": "CANCELED"},
                                   headers=alice.headers())).json()
    assert [p["outbox_id"] for p in listed["data"]] == [outbox_id]
    feed = (await events(api, alice)).json()["data"]
    assert [e["type"] for e in feed] == ["payment.created", "payment.canceled"]
    assert feed[1]["data"]["object"] == body


async def test_a_payment_being_dispatched_is_409_with_its_state(
    api: Running, alice: Member, isolated_db: Database
) -> None:
    outbox_id = await pay(api, alice)
    claimed = [c for c in await OutboxStore(isolated_db).claim("w-cancel", 1000, 60)
               if str(c.outbox_id) == outbox_id]
    assert claimed
    body = envelope(await cancel(api, alice, outbox_id), 409, "payment_not_cancelable")
    assert body["current"] == {"state": "DISPATCHING"}


async def test_another_participants_payment_is_404(
    api: Running, alice: Member, bob: Member
) -> None:
    outbox_id = await pay(api, alice)
    envelope(await cancel(api, bob, outbox_id), 404, "not_found")
    envelope(await cancel(api, bob, str(uuid4())), 404, "not_found")
    envelope(await cancel(api, bob, "not-a-uuid"), 404, "not_found")


@pytest.mark.parametrize("body", [{"reason": "bell\u0007"}, {"reason": 5}, {"why": "x"}, [1]])
async def test_a_malformed_cancel_body_is_422_and_cancels_nothing(
    api: Running, alice: Member, body: Any
) -> None:
    outbox_id = await pay(api, alice)
    envelope(await cancel(api, alice, outbox_id, body), 422, "invalid_request")
    got = (await api.client.get(f"/v1/payments/{outbox_id}", headers=alice.headers())).json()
    assert got["state"] == "PENDING"


async def test_an_operator_cancels_through_the_ops_api(
    isolated_db: Database, alice: Member
) -> None:
    access = AccessStore(isolated_db)
    acting = (await access.issue_token(TokenKind.OPERATOR, label="ann",
                                       scope=TokenScope.OPERATOR)).token
    viewing = (await access.issue_token(TokenKind.OPERATOR, label="viewer",
                                        scope=TokenScope.VIEWER)).token
    async with serve(isolated_db, routers=operator_routers()) as api:
        outbox_id = await pay(api, alice)
        url = f"/v1/ops/payments/{outbox_id}/cancel"
        body = json.dumps({"reason": "fraud suspected"})
        json_type = {"Content-Type": "application/json"}
        viewer = await api.client.post(url, content=body, headers={
            "Authorization": f"Bearer {viewing}", **json_type})
        envelope(viewer, 403, "insufficient_scope")
        no_reason = await api.client.post(url, content="{}", headers={
            "Authorization": f"Bearer {acting}", **json_type})
        envelope(no_reason, 422, "invalid_request")
        done = await api.client.post(url, content=body, headers={
            "Authorization": f"Bearer {acting}", **json_type})
        assert done.status_code == 200, done.text
        assert done.json()["result"] == "CANCELED" and done.json()["action_id"] is not None
        assert done.json()["participant_id"] == alice.participant_id
        participant_view = (await api.client.get(f"/v1/payments/{outbox_id}",
                                                 headers=alice.headers())).json()
        assert participant_view["last_error_code"] == "CANCELED_BY_OPERATOR"
        spec = (await api.client.get("/openapi.json")).json()
        assert "post" in spec["paths"]["/v1/ops/payments/{outbox_id}/cancel"]
        assert "409" in spec["paths"]["/v1/payments/{outbox_id}/cancel"]["post"]["responses"]
