"""The participant API over real HTTP (uvicorn on a loopback port, httpx) against the real
database: every status code, idempotent replays byte for byte, concurrency, isolation between
participants, revocation, and refusals that leave every table as it was."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from uuid import uuid4

import httpx
import pytest
from tests.support.api import (
    Member,
    Running,
    new_member,
    operator_token,
    payment_body,
    row_counts,
    serve,
)
from tests.support.database import DatabaseFactory

from symphony.db import Database, Principal, test_only
from symphony.outbox import Completion, OutboxStore, Outcome
from symphony.outbox.access import AccessStore

JSON = {"Content-Type": "application/json"}


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


def key() -> str:
    return f"key-{uuid4()}"


async def post(api: Running, member: Member, body: object, idem: str | None = None,
               **headers: str) -> httpx.Response:
    all_headers = {**member.headers(idem if idem is not None else key()), **JSON, **headers}
    return await api.client.post("/v1/payments", content=json.dumps(body), headers=all_headers)


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    assert isinstance(body["message"], str) and body["message"]
    return body


# -- create and replay -----------------------------------------------------------------------


async def test_create_answers_201_and_a_replay_200_with_the_same_bytes(
    api: Running, alice: Member
) -> None:
    body = payment_body(metadata={"invoice": "INV-1", "note": "caf\u00e9 \u2014 \U0001f4b6",
                                  "z": "last", "a": "first"})
    idem = key()
    first = await post(api, alice, body, idem)
    assert first.status_code == 201, first.text
    created = first.json()
    assert set(created) == {"outbox_id", "instruction_id", "idempotency_key", "rail_type",
                            "amount", "currency", "destination", "metadata", "created_at",
                            "links"}
    assert created["instruction_id"] == body["instruction_id"]
    assert created["idempotency_key"] == idem
    assert (created["amount"], created["currency"]) == ("12.50", "EUR")
    assert created["metadata"] == body["metadata"]
    assert first.headers["location"] == f"/v1/payments/{created['outbox_id']}"
    assert created["links"] == {"self": first.headers["location"]}
    assert "idempotent-replayed" not in first.headers
    assert first.headers["cache-control"] == "no-store"

    # The same request again, keys in another order: the same payment, the same bytes.
    reordered = dict(reversed(list(body.items())))
    again = await post(api, alice, reordered, idem)
    assert again.status_code == 200, again.text
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    # A quoted (structured-field) key is the same key.
    quoted = await post(api, alice, body, f'"{idem}"')
    assert quoted.status_code == 200 and quoted.content == first.content


async def test_a_key_reused_with_a_different_request_is_422(
    api: Running, alice: Member, isolated_admin_dsn: str
) -> None:
    body = payment_body()
    idem = key()
    assert (await post(api, alice, body, idem)).status_code == 201
    before = await row_counts(isolated_admin_dsn)
    for changed in ({"amount": "12.51"}, {"destination": "elsewhere"}, {"rail_type": "RTP"},
                    {"metadata": {"a": "1"}}):
        reused = await post(api, alice, {**body, **changed}, idem)
        envelope(reused, 422, "idempotency_key_reused")
    assert await row_counts(isolated_admin_dsn) == before


async def test_the_same_key_for_another_instruction_is_another_payment(
    api: Running, alice: Member
) -> None:
    # I1's identity is (participant, instruction_id, key): documented in the README.
    idem = key()
    first = await post(api, alice, payment_body(), idem)
    other = await post(api, alice, payment_body(), idem)
    assert (first.status_code, other.status_code) == (201, 201)
    assert first.json()["outbox_id"] != other.json()["outbox_id"]


async def test_32_concurrent_posts_of_one_key_make_one_payment(
    api: Running, alice: Member, isolated_admin_dsn: str
) -> None:
    body = payment_body()
    idem = key()
    responses = await asyncio.gather(*(post(api, alice, body, idem) for _ in range(32)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 31 + [201], statuses
    assert len({r.content for r in responses}) == 1
    outbox_id = responses[0].json()["outbox_id"]
    rows = await _registry_rows(isolated_admin_dsn, alice.participant_id, idem)
    assert rows == [outbox_id]


async def _registry_rows(admin_dsn: str, participant_id: str, idem: str) -> list[str]:
    rows = await test_only.query_no_role(
        admin_dsn,
        "SELECT outbox_id::text AS id FROM symphony.payment_instruction_registry "
        " WHERE participant_id = %s AND idempotency_key = %s",
        (participant_id, idem),
    )
    return [str(r["id"]) for r in rows]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"amount": "0"}, "amount", "INVALID_AMOUNT"),
        ({"amount": "-1.00"}, "amount", "INVALID_AMOUNT"),
        ({"amount": "1.123456789"}, "amount", "INVALID_AMOUNT"),
        ({"amount": "twelve"}, "amount", "INVALID_AMOUNT"),
        ({"amount": 12.5}, "amount", "INVALID_AMOUNT"),
        ({"currency": "eur"}, "currency", "INVALID_CURRENCY"),
        ({"currency": "EURO"}, "currency", "INVALID_CURRENCY"),
        ({"destination": ""}, "destination", "INVALID_DESTINATION"),
        ({"destination": "x" * 300}, "destination", "INVALID_DESTINATION"),
        ({"rail_type": "CARRIER_PIGEON"}, "rail_type", "UNKNOWN_RAIL_TYPE"),
        ({"instruction_id": "has space"}, "instruction_id", "INVALID_INSTRUCTION_ID"),
        ({"instruction_id": 7}, "instruction_id", "INVALID_TYPE"),
        ({"metadata": [1, 2]}, "metadata", "INVALID_TYPE"),
        ({"metadata": {"n": 1}}, "metadata", "INVALID_METADATA"),
        ({"amount": "1.001", "currency": "EUR"}, "amount", "INVALID_AMOUNT"),
        ({"currency": "XYZ"}, "currency", "INVALID_CURRENCY"),
        ({"participant_id": "someone-else"}, "participant_id", "UNKNOWN_FIELD"),
        ({"currency": None}, "currency", "INVALID_TYPE"),
    ],
)
async def test_field_errors_carry_the_database_codes(
    api: Running, alice: Member, isolated_admin_dsn: str,
    change: dict[str, object], field: str, code: str,
) -> None:
    before = await row_counts(isolated_admin_dsn)
    response = await post(api, alice, payment_body(**change))
    body = envelope(response, 422, "invalid_request")
    errors = body["errors"]
    assert isinstance(errors, list) and errors
    assert {"field": field, "code": code} == {k: errors[0][k] for k in ("field", "code")}, errors
    assert await row_counts(isolated_admin_dsn) == before


async def test_missing_fields_are_listed(api: Running, alice: Member) -> None:
    response = await post(api, alice, {"amount": "1.00"})
    body = envelope(response, 422, "invalid_request")
    missing = {e["field"] for e in body["errors"] if e["code"] == "REQUIRED"}  # type: ignore[union-attr]
    assert missing == {"instruction_id", "rail_type", "currency", "destination"}
    not_object = await post(api, alice, ["a", "list"])
    assert envelope(not_object, 422, "invalid_request")["errors"] == [
        {"field": None, "code": "INVALID_BODY", "message": "the body must be a JSON object"}]


@pytest.mark.parametrize("raw", [
    b"", b"{", b"{'a': 1}", b'{"amount": NaN}', b'{"a": Infinity}', b'{"a": 1e999}',
    b'{"a": "\\ud800"}', b"\xff\xfe{}", b"[" * 100 + b"]" * 100,
])
async def test_malformed_json_is_400(api: Running, alice: Member, raw: bytes) -> None:
    response = await api.client.post("/v1/payments", content=raw,
                                     headers={**alice.headers(key()), **JSON})
    envelope(response, 400, "invalid_json")


async def test_nul_characters_are_refused_by_the_database_not_a_crash(
    api: Running, alice: Member
) -> None:
    response = await post(api, alice, payment_body(destination="a\u0000b"))
    assert response.status_code == 422, response.text


async def test_idempotency_key_missing_or_malformed_is_400(
    api: Running, alice: Member, isolated_admin_dsn: str
) -> None:
    before = await row_counts(isolated_admin_dsn)
    no_key = await api.client.post("/v1/payments", content=json.dumps(payment_body()),
                                   headers={**alice.headers(), **JSON})
    envelope(no_key, 400, "idempotency_key_missing")
    for bad in ("", "with space", "tab\there", "a,b", 'quo"te', "back\\slash", "x" * 256, "caf\u00e9",
                '""'):
        response = await api.client.post(
            "/v1/payments", content=json.dumps(payment_body()),
            headers={**alice.headers(), **JSON, "Idempotency-Key": bad.encode("utf-8")},  # type: ignore[dict-item]
        )
        envelope(response, 400, "idempotency_key_invalid")
    two = await api.client.post(
        "/v1/payments", content=json.dumps(payment_body()),
        headers=[("Authorization", f"Bearer {alice.token}"), ("Content-Type", "application/json"),
                 ("Idempotency-Key", "k-1-aaaaaaaa"), ("Idempotency-Key", "k-2-bbbbbbbb")],
    )
    envelope(two, 400, "idempotency_key_invalid")
    assert await row_counts(isolated_admin_dsn) == before


async def test_media_type_and_size(api: Running, alice: Member, isolated_admin_dsn: str) -> None:
    before = await row_counts(isolated_admin_dsn)
    content = json.dumps(payment_body())
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded",
                         "application/json; charset=latin-1", "application/jsonx"):
        headers = alice.headers(key())
        if content_type:
            headers["Content-Type"] = content_type
        response = await api.client.post("/v1/payments", content=content, headers=headers)
        envelope(response, 415, "unsupported_media_type")
    ok_charset = await api.client.post(
        "/v1/payments", content=content,
        headers={**alice.headers(key()), "Content-Type": "Application/JSON; charset=UTF-8"})
    assert ok_charset.status_code == 201, ok_charset.text
    after_ok = await row_counts(isolated_admin_dsn)
    huge = payment_body(metadata={"blob": "x" * (70 * 1024)})
    envelope(await post(api, alice, huge), 413, "payload_too_large")

    async def stream() -> AsyncIterator[bytes]:
        yield b'{"metadata": {"blob": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}}'

    streamed = await api.client.post("/v1/payments", content=stream(),
                                     headers={**alice.headers(key()), **JSON})
    envelope(streamed, 413, "payload_too_large")
    assert await row_counts(isolated_admin_dsn) == after_ok
    assert after_ok != before  # the one good request did write


# -- authentication and isolation ------------------------------------------------------------


async def test_401_without_a_valid_participant_token(
    api: Running, alice: Member, isolated_db: Database, isolated_admin_dsn: str
) -> None:
    operator = await operator_token(isolated_db)
    before = await row_counts(isolated_admin_dsn)
    content = json.dumps(payment_body())
    for headers in ({}, {"Authorization": "Bearer sy_pt_not_a_real_token"},
                    {"Authorization": f"Basic {alice.token}"},
                    {"Authorization": f"Bearer {operator}"}):
        for method, path in (("POST", "/v1/payments"), ("GET", "/v1/payments"),
                             ("GET", f"/v1/payments/{uuid4()}")):
            response = await api.client.request(
                method, path, content=content if method == "POST" else None,
                headers={**headers, **JSON, "Idempotency-Key": key()})
            envelope(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith('Bearer realm="symphony"')
    assert await row_counts(isolated_admin_dsn) == before


async def test_a_revoked_token_or_participant_is_refused_at_once(
    api: Running, isolated_db: Database
) -> None:
    carol = await new_member(isolated_db, "carol")
    ok = await post(api, carol, payment_body())
    assert ok.status_code == 201
    await AccessStore(isolated_db).revoke_token(carol.token_id)
    envelope(await post(api, carol, payment_body()), 401, "unauthorized")
    envelope(await api.client.get("/v1/payments", headers=carol.headers()), 401, "unauthorized")

    dave = await new_member(isolated_db, "dave")
    assert (await post(api, dave, payment_body())).status_code == 201
    await AccessStore(isolated_db).revoke_participant(dave.participant_id)
    envelope(await post(api, dave, payment_body()), 401, "unauthorized")


async def test_participants_cannot_see_each_other(
    api: Running, alice: Member, bob: Member
) -> None:
    body = payment_body()
    idem = key()
    mine = await post(api, alice, body, idem)
    assert mine.status_code == 201
    outbox_id = mine.json()["outbox_id"]

    theirs = await api.client.get(f"/v1/payments/{outbox_id}", headers=bob.headers())
    unknown = await api.client.get(f"/v1/payments/{uuid4()}", headers=bob.headers())
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["code"] == unknown.json()["code"] == "not_found"
    assert theirs.json()["message"] == unknown.json()["message"]
    listed = await api.client.get("/v1/payments", headers=bob.headers())
    assert outbox_id not in {p["outbox_id"] for p in listed.json()["data"]}
    # Bob's own payment with the same instruction id and key is a different payment (keys
    # are scoped to the participant), and nothing in the answer reveals Alice's.
    same = await post(api, bob, body, idem)
    assert same.status_code == 201, same.text
    assert same.json()["outbox_id"] != outbox_id
    own = await api.client.get(f"/v1/payments/{outbox_id}", headers=alice.headers())
    assert own.status_code == 200


async def test_not_found_for_ids_that_are_not_uuids(api: Running, alice: Member) -> None:
    for path in ("/v1/payments/not-a-uuid", "/v1/payments/%00", f"/v1/payments/{uuid4()}x"):
        envelope(await api.client.get(path, headers=alice.headers()), 404, "not_found")


# -- reading ---------------------------------------------------------------------------------


async def test_get_shows_state_and_attempts_through_the_life_cycle(
    make_database: DatabaseFactory,
) -> None:
    # A database of its own: this test claims from the queue.
    async with await Database.open(make_database()) as db:
        member = await new_member(db, "life")
        async with serve(db) as running:
            created = await post(running, member, payment_body())
            outbox_id = created.json()["outbox_id"]
            pending = await running.client.get(f"/v1/payments/{outbox_id}",
                                               headers=member.headers())
            assert pending.status_code == 200, pending.text
            view = pending.json()
            assert view["state"] == "PENDING" and view["attempts"] == []
            assert view["attempt_count"] == 0 and view["terminal_at"] is None
            assert view["created_at"] == created.json()["created_at"]

            store = OutboxStore(db)
            [claimed] = await store.claim("api-test-worker", 10, 60)
            assert str(claimed.outbox_id) == outbox_id
            dispatching = (await running.client.get(f"/v1/payments/{outbox_id}",
                                                    headers=member.headers())).json()
            assert dispatching["state"] == "DISPATCHING"
            await store.complete(Completion(claimed.outbox_id, claimed.lease_token,
                                            Outcome.DISPATCHED, rail_transaction_id="rail-1"))
            done = (await running.client.get(f"/v1/payments/{outbox_id}",
                                             headers=member.headers())).json()
            assert done["state"] == "DISPATCHED" and done["terminal_at"] is not None
            assert [(a["attempt_no"], a["state"]) for a in done["attempts"]] == [
                (1, "DISPATCHING"), (2, "DISPATCHED")]
            assert done["attempts"][1]["rail_transaction_id"] == "rail-1"
            # The POST's answer is fixed at creation: a replay now is still byte-identical.
            replay = await post(running, member, _body_of(created), created.json()[
                "idempotency_key"])
            assert replay.status_code == 200 and replay.content == created.content


def _body_of(created: httpx.Response) -> dict[str, object]:
    data = created.json()
    body = {k: data[k] for k in ("instruction_id", "rail_type", "amount", "currency",
                                 "destination")}
    if data["metadata"] is not None:
        body["metadata"] = data["metadata"]
    return body


async def test_list_pages_by_cursor_and_filters_by_state(
    api: Running, isolated_db: Database
) -> None:
    erin = await new_member(isolated_db, "erin")
    made = []
    for _ in range(5):
        response = await post(api, erin, payment_body())
        made.append(response.json()["outbox_id"])
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after:
            params["after"] = after
        page = await api.client.get("/v1/payments", params=params, headers=erin.headers())
        assert page.status_code == 200, page.text
        body = page.json()
        pages += 1
        seen += [p["outbox_id"] for p in body["data"]]
        assert len(body["data"]) <= 2
        if not body["has_more"]:
            assert body["next_after"] is None
            break
        assert body["next_after"] == body["data"][-1]["outbox_id"]
        after = body["next_after"]
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen)) == 5
    assert pages == 3
    pending = await api.client.get("/v1/payments", params={"state": "PENDING"},
                                   headers=erin.headers())
    assert {p["outbox_id"] for p in pending.json()["data"]} == set(made)
    failed = await api.client.get("/v1/payments", params={"state": "FAILED"},
                                  headers=erin.headers())
    assert failed.json() == {"data": [], "has_more": False, "next_after": None}
    for bad in ({"state": "LOST"}, {"after": "nope"}, {"limit": 0}, {"limit": 101},
                {"limit": "ten"}):
        response = await api.client.get("/v1/payments", params=bad, headers=erin.headers())
        body = envelope(response, 422, "invalid_request")
        assert body["errors"][0]["field"] == next(iter(bad))  # type: ignore[index]


# -- the database away -----------------------------------------------------------------------


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_503_with_retry_after_when_the_database_is_unreachable(
    isolated_db: Database,
) -> None:
    # A well-formed token (of the live database), so that it is the database that is asked.
    member = await new_member(isolated_db, "unreachable")
    dsn = (f"postgresql://{Principal.API.value}:x@127.0.0.1:{_dead_port()}/symphony"
           "?connect_timeout=2")
    dead = Database(isolated_db.settings, None, dsns={Principal.API: dsn})
    try:
        async with serve(dead) as running:
            for method, path in (("POST", "/v1/payments"), ("GET", "/v1/payments"),
                                 ("GET", "/readyz")):
                response = await running.client.request(
                    method, path, content=json.dumps(payment_body()),
                    headers={**member.headers(key()), **JSON})
                envelope(response, 503, "service_unavailable")
                assert int(response.headers["retry-after"]) >= 1
            assert (await running.client.get("/healthz")).status_code == 200
    finally:
        await dead.close()
