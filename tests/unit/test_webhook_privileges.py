"""Least privilege of the webhook tables and functions, against the real server: each grant
allowed for the role that needs it and refused (42501) for another; the secrets table is read
by no runtime role; the attempt history is append-only even for the owner; the delivery login
may become only its own role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from tests.support.database import unique
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import admin, box_of, hooked_participant, pay, retire

from symphony.db import (
    Database,
    InvariantViolationError,
    Principal,
    Role,
    SymphonyError,
    test_only,
)
from symphony.webhooks import SecretUnavailableError, WebhookStore

SEALED = "'\\x" + "00" * 60 + "'::bytea"
KEY_ID = "'0123456789abcdef'"

WEBHOOKS_FUNCTIONS = {
    "create_webhook_endpoint": (
        "SELECT * FROM symphony.create_webhook_endpoint('{pid}', gen_random_uuid(), "
        "'https://hooks.example.com/x', ARRAY['payment.created'], '', " + SEALED + ", "
        + KEY_ID + ")"),
    "participant_webhook_endpoints": (
        "SELECT * FROM symphony.participant_webhook_endpoints('{pid}')"),
    "delete_webhook_endpoint": (
        "SELECT * FROM symphony.delete_webhook_endpoint('{pid}', '{endpoint_id}')"),
    "rotate_webhook_endpoint_secret": (
        "SELECT * FROM symphony.rotate_webhook_endpoint_secret('{pid}', '{endpoint_id}', "
        + SEALED + ", " + KEY_ID + ", 60)"),
}
OPERATOR_FUNCTIONS = {
    "ops_webhook_endpoints": "SELECT * FROM symphony.ops_webhook_endpoints(NULL, 5)",
    "set_webhook_endpoint_enabled": (
        "SELECT * FROM symphony.set_webhook_endpoint_enabled('{endpoint_id}', false, 'test')"),
    "ops_webhook_deliveries": (
        "SELECT * FROM symphony.ops_webhook_deliveries('{endpoint_id}', 5)"),
    "webhook_health": "SELECT * FROM symphony.webhook_health()",
}
# Since the replay became an operator action (migration ops_replay_webhook_delivery) the
# unrecorded replay is the owner's alone: the recording wrappers call it
# (tests/unit/test_ops_webhook_replay.py proves theirs).
UNRECORDED_REPLAY = "SELECT * FROM symphony.replay_webhook_delivery('{delivery_id}', 'test')"
DELIVERY_FUNCTIONS = {
    "fan_out_webhook_events": "SELECT * FROM symphony.fan_out_webhook_events(1, 1)",
    "claim_webhook_deliveries": (
        "SELECT * FROM symphony.claim_webhook_deliveries('privileges', 1, 60) "
        " WHERE participant_id = '{pid}'"),
    "complete_webhook_delivery": (
        "SELECT * FROM symphony.complete_webhook_delivery('{pid}', gen_random_uuid(), "
        "gen_random_uuid(), 'DELIVERED', NULL, 200, 1, NULL, NULL, now(), 10)"),
    "webhook_health": "SELECT * FROM symphony.webhook_health()",
}
TABLES = ["webhook_endpoints", "webhook_endpoint_secrets", "webhook_deliveries",
          "webhook_delivery_attempts"]


def assert_sqlstate(err: SymphonyError, sqlstate: str) -> None:
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate} ({err.code})"
    assert isinstance(err.__cause__, psycopg.Error)
    assert err.__cause__.sqlstate == sqlstate


async def refused(db: Database, role: Role, statement: str) -> SymphonyError:
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(db, role, statement)
    return info.value


async def _args(db: Database) -> dict[str, str]:
    """A participant with an endpoint that has one delivery (to a receiver that is down)."""
    receiver = Receiver()
    hooked = await hooked_participant(db, receiver)
    await pay(db, hooked.participant_id)
    await WebhookStore(db).fan_out(1000, 1000)
    rows = await admin(db, "SELECT delivery_id FROM symphony.webhook_deliveries "
                           "WHERE participant_id = %s", (hooked.participant_id,))
    return {"pid": hooked.participant_id, "endpoint_id": str(hooked.endpoint_id),
            "delivery_id": str(rows[0]["delivery_id"])}


async def _cleanup(db: Database, args: dict[str, str]) -> None:
    await admin(db, "UPDATE symphony.webhook_endpoints SET status = 'DELETED' "
                    "WHERE participant_id = %s", (args["pid"],))


@pytest.fixture
async def args(db: Database) -> AsyncIterator[dict[str, str]]:
    made = await _args(db)
    yield made
    await _cleanup(db, made)


@pytest.mark.parametrize("name", WEBHOOKS_FUNCTIONS)
async def test_the_webhooks_role_runs_the_endpoint_functions(
    db: Database, args: dict[str, str], name: str
) -> None:
    await test_only.execute_as_role(db, Role.WEBHOOKS, WEBHOOKS_FUNCTIONS[name].format(**args))


@pytest.mark.parametrize("role", [Role.INGEST, Role.READONLY, Role.DELIVERY, Role.CONTROL])
@pytest.mark.parametrize("name", WEBHOOKS_FUNCTIONS)
async def test_no_other_role_runs_the_endpoint_functions(
    db: Database, args: dict[str, str], name: str, role: Role
) -> None:
    err = await refused(db, role, WEBHOOKS_FUNCTIONS[name].format(**args))
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [Role.WEBHOOKS, Role.CONTROL])
@pytest.mark.parametrize("name", OPERATOR_FUNCTIONS)
async def test_webhooks_and_control_run_the_operator_functions(
    db: Database, args: dict[str, str], name: str, role: Role
) -> None:
    await test_only.execute_as_role(db, role, OPERATOR_FUNCTIONS[name].format(**args))


@pytest.mark.parametrize("role", [Role.INGEST, Role.READONLY, Role.EXECUTOR, Role.AUDITOR])
@pytest.mark.parametrize("name", OPERATOR_FUNCTIONS)
async def test_other_roles_cannot_run_the_operator_functions(
    db: Database, args: dict[str, str], name: str, role: Role
) -> None:
    err = await refused(db, role, OPERATOR_FUNCTIONS[name].format(**args))
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", list(Role))
async def test_no_role_replays_without_a_record(
    db: Database, args: dict[str, str], role: Role
) -> None:
    err = await refused(db, role, UNRECORDED_REPLAY.format(**args))
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("name", DELIVERY_FUNCTIONS)
async def test_the_delivery_role_runs_the_delivery_functions(
    db: Database, args: dict[str, str], name: str
) -> None:
    statement = DELIVERY_FUNCTIONS[name].format(**args)
    if name == "complete_webhook_delivery":
        # Allowed to run; refused on the unknown lease (SY077), not on privilege.
        err = await refused(db, Role.DELIVERY, statement)
        assert err.code == "DELIVERY_LEASE_NOT_HELD"
        return
    await test_only.execute_as_role(db, Role.DELIVERY, statement)


@pytest.mark.parametrize("role", [Role.WEBHOOKS, Role.EXECUTOR, Role.INGEST, Role.CONTROL])
@pytest.mark.parametrize("name", [n for n in DELIVERY_FUNCTIONS if n != "webhook_health"])
async def test_no_other_role_runs_the_delivery_functions(
    db: Database, args: dict[str, str], name: str, role: Role
) -> None:
    err = await refused(db, role, DELIVERY_FUNCTIONS[name].format(**args))
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("role", list(Role))
async def test_no_runtime_role_writes_a_webhook_table(
    db: Database, role: Role, table: str
) -> None:
    err = await refused(db, role, f"DELETE FROM symphony.{table}")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", list(Role))
async def test_no_runtime_role_reads_the_secrets(db: Database, role: Role) -> None:
    err = await refused(db, role, "SELECT secret_ciphertext FROM symphony.webhook_endpoint_secrets")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [r for r in Role if r != Role.AUDITOR])
async def test_only_the_auditor_reads_the_delivery_history(db: Database, role: Role) -> None:
    err = await refused(db, role, "SELECT * FROM symphony.webhook_delivery_attempts")
    assert_sqlstate(err, "42501")


async def test_the_auditor_reads_the_delivery_history_but_no_lease(
    db: Database, args: dict[str, str]
) -> None:
    rows = await test_only.execute_as_role(
        db, Role.AUDITOR,
        "SELECT d.delivery_id, d.status, count(a.*) AS attempts "
        "  FROM symphony.webhook_deliveries d "
        "  LEFT JOIN symphony.webhook_delivery_attempts a "
        "    ON a.participant_id = d.participant_id AND a.delivery_id = d.delivery_id "
        " WHERE d.participant_id = %s GROUP BY 1, 2", (args["pid"],))
    assert len(rows) == 1
    err = await refused(db, Role.AUDITOR, "SELECT lease_token FROM symphony.webhook_deliveries")
    assert_sqlstate(err, "42501")


async def test_the_endpoint_list_holds_no_secret(db: Database, args: dict[str, str]) -> None:
    rows = await test_only.execute_as_role(
        db, Role.WEBHOOKS,
        f"SELECT * FROM symphony.participant_webhook_endpoints('{args['pid']}')")
    assert rows and not any("secret" in k and k != "live_secrets" for k in rows[0])


@pytest.mark.parametrize("statement", [
    "UPDATE symphony.webhook_delivery_attempts SET http_status = 200",
    "DELETE FROM symphony.webhook_delivery_attempts",
    "TRUNCATE symphony.webhook_delivery_attempts",
])
async def test_the_attempt_history_is_append_only_even_for_the_owner(
    db: Database, statement: str
) -> None:
    receiver = Receiver()
    hooked = await hooked_participant(db, receiver)
    try:
        await pay(db, hooked.participant_id)
        store = WebhookStore(db)
        await store.fan_out(1000, 1000)
        await admin(db, "UPDATE symphony.webhook_deliveries SET lease_token = gen_random_uuid(), "
                        "lease_expires_at = now() - interval '1 s', attempt_count = 1 "
                        "WHERE participant_id = %s", (hooked.participant_id,))
        await store.claim(unique("w"), 1000, 60)  # records the lost attempt
        with pytest.raises(InvariantViolationError) as info:
            await test_only.query_as_owner(db.endpoint.admin_dsn, statement)  # type: ignore[union-attr]
        assert_sqlstate(info.value, "P0001")
        assert info.value.code == "HISTORY_IS_APPEND_ONLY"
    finally:
        await retire(db, hooked)


async def test_the_delivery_principal_becomes_only_the_delivery_role(db: Database) -> None:
    who = await test_only.switch_role_as_principal(db, Principal.DELIVERY, Role.DELIVERY.value)
    assert who == Role.DELIVERY.value
    for target in (Role.EXECUTOR, Role.WEBHOOKS, Role.CONTROL):
        with pytest.raises(SymphonyError) as info:
            await test_only.switch_role_as_principal(db, Principal.DELIVERY, target.value)
        assert_sqlstate(info.value, "42501")


async def test_the_api_principal_becomes_the_webhooks_role_but_not_delivery(db: Database) -> None:
    assert await test_only.switch_role_as_principal(
        db, Principal.API, Role.WEBHOOKS.value) == Role.WEBHOOKS.value
    with pytest.raises(SymphonyError) as info:
        await test_only.switch_role_as_principal(db, Principal.API, Role.DELIVERY.value)
    assert_sqlstate(info.value, "42501")


async def test_a_sealed_secret_opens_only_on_its_own_endpoint(db: Database) -> None:
    box = box_of(db)
    a, b = uuid.uuid4(), uuid.uuid4()
    sealed = box.seal(b"k" * 32, "p1", a)
    assert box.open(sealed, box.key_id, "p1", a) == b"k" * 32
    with pytest.raises(SecretUnavailableError):
        box.open(sealed, box.key_id, "p1", b)
    with pytest.raises(SecretUnavailableError):
        box.open(sealed, "f" * 16, "p1", a)
