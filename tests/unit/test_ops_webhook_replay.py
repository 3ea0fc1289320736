"""Replaying a webhook delivery is an accountable operator action (migration
ops_replay_webhook_delivery): the operator API's function verifies the acting token and records
REPLAY_WEBHOOK_DELIVERY with the token's id and label and the reason, under the payment the
event is about; the command line's records the operator's name; a replay that lost a race (a
replay of the same delivery still waits, or the endpoint was deleted) writes nothing and says
where things stand; every grant has a role allowed and one refused."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import Hooked, admin, deliveries_of, hooked_participant, pay, retire
from tests.unit.test_operators import HASH, caller

from symphony.db import (
    Database,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Role,
    test_only,
)
from symphony.outbox import TokenScope
from symphony.outbox.operators import OperatorStore
from symphony.webhooks import WebhookStore


async def a_delivery(db: Database) -> tuple[Hooked, dict[str, Any]]:
    """A participant with an endpoint (on a receiver nobody runs) and one delivery of its
    payment.created event."""
    hooked = await hooked_participant(db, Receiver())
    await pay(db, hooked.participant_id)
    await WebhookStore(db).fan_out(1000, 1000)
    [delivery] = await deliveries_of(db, hooked.participant_id)
    return hooked, delivery


async def actions_on(db: Database, delivery_id: UUID) -> list[dict[str, Any]]:
    return await admin(db, "SELECT * FROM symphony_ops.operator_actions WHERE target = %s "
                           "ORDER BY action_id", (str(delivery_id),))


async def finish(db: Database, delivery_id: UUID, status: str = "DELIVERED") -> None:
    await admin(db, "UPDATE symphony.webhook_deliveries SET status = %s, finished_at = now() "
                    "WHERE delivery_id = %s", (status, delivery_id))


@pytest.fixture
async def setup(db: Database) -> Any:
    hooked, delivery = await a_delivery(db)
    yield hooked, delivery
    # Its deliveries stop competing with other tests' claims (deleted already by some tests).
    await admin(db, "UPDATE symphony.webhook_endpoints SET status = 'DELETED' "
                    "WHERE participant_id = %s", (hooked.participant_id,))


# -- privileges ------------------------------------------------------------------------------


async def test_the_operator_role_reaches_the_token_replay(db: Database) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(
            db, Role.OPERATOR, "SELECT * FROM symphony.ops_replay_webhook_delivery("
            "gen_random_uuid(), " + HASH + ", gen_random_uuid(), 'why')")
    assert info.value.sqlstate == "SY060"  # past the privilege check: the token is unknown


@pytest.mark.parametrize("role", [Role.WEBHOOKS, Role.CONTROL, Role.READONLY])
async def test_other_roles_are_refused_the_token_replay(db: Database, role: Role) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(
            db, role, "SELECT * FROM symphony.ops_replay_webhook_delivery("
            "gen_random_uuid(), " + HASH + ", gen_random_uuid(), 'why')")
    assert info.value.sqlstate == "42501"


async def test_control_reaches_the_command_line_replay(db: Database) -> None:
    with pytest.raises(NotFoundError) as info:
        await test_only.execute_as_role(
            db, Role.CONTROL, "SELECT * FROM symphony.replay_webhook_delivery_by_operator("
            "gen_random_uuid(), 'ops-jane', 'why')")
    assert info.value.code == "UNKNOWN_WEBHOOK_DELIVERY"


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.WEBHOOKS, Role.READONLY])
async def test_other_roles_are_refused_the_command_line_replay(db: Database, role: Role) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(
            db, role, "SELECT * FROM symphony.replay_webhook_delivery_by_operator("
            "gen_random_uuid(), 'ops-jane', 'why')")
    assert info.value.sqlstate == "42501"


@pytest.mark.parametrize("role", list(Role))
async def test_the_recording_helper_is_nobodys(db: Database, role: Role) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(
            db, role, "SELECT * FROM symphony.record_webhook_replay(gen_random_uuid(), NULL, "
            "'x', 'x', 'why')")
    assert info.value.sqlstate == "42501"


# -- the action ------------------------------------------------------------------------------


async def test_an_operator_token_replays_and_the_payment_history_names_it(
    db: Database, setup: tuple[Hooked, dict[str, Any]]
) -> None:
    hooked, delivery = setup
    actor = await caller(db, TokenScope.OPERATOR, label="bob on call")
    ops = OperatorStore(db)
    done = await ops.replay_webhook_delivery(actor, delivery["delivery_id"],
                                             "receiver fixed, ticket 88")
    assert done["result"] == "REPLAYED" and done["status"] == "PENDING"
    assert done["replay_of"] == delivery["delivery_id"]
    assert done["event_id"] == delivery["event_id"]
    rows = await deliveries_of(db, hooked.participant_id)
    [new] = [r for r in rows if r["delivery_id"] == done["delivery_id"]]
    assert new["replay_requested_by"] == f"operator:token:{actor.token_id}"
    [action] = await actions_on(db, delivery["delivery_id"])
    assert action["action"] == "REPLAY_WEBHOOK_DELIVERY"
    assert (action["actor_token_id"], action["actor_label"], action["reason"]) == (
        actor.token_id, "bob on call", "receiver fixed, ticket 88")
    assert action["action_id"] == done["action_id"]
    assert action["participant_id"] == hooked.participant_id
    assert action["outcome"]["replay_delivery_id"] == str(done["delivery_id"])
    assert action["outcome"]["event_type"] == "payment.created"
    # The payment the event is about shows the replay in its history.
    [event] = await admin(db, "SELECT outbox_id FROM symphony.payment_events "
                              "WHERE participant_id = %s", (hooked.participant_id,))
    assert done["outbox_id"] == event["outbox_id"] == action["outbox_id"]
    history = await ops.item_actions(event["outbox_id"])
    assert [(h["action"], h["actor_label"]) for h in history] == [
        ("REPLAY_WEBHOOK_DELIVERY", "bob on call")]


async def test_a_viewer_token_cannot_replay_and_nothing_is_written(
    db: Database, setup: tuple[Hooked, dict[str, Any]]
) -> None:
    hooked, delivery = setup
    viewer = await caller(db, TokenScope.VIEWER)
    with pytest.raises(PermissionDeniedError) as info:
        await OperatorStore(db).replay_webhook_delivery(viewer, delivery["delivery_id"], "x")
    assert info.value.code == "INSUFFICIENT_SCOPE"
    assert len(await deliveries_of(db, hooked.participant_id)) == 1
    assert await actions_on(db, delivery["delivery_id"]) == []


@pytest.mark.parametrize("reason", ["", "   ", "line\nbreak", "x" * 501])
async def test_a_replay_needs_a_printable_reason(
    db: Database, setup: tuple[Hooked, dict[str, Any]], reason: str
) -> None:
    hooked, delivery = setup
    actor = await caller(db, TokenScope.OPERATOR)
    with pytest.raises(InvalidRequestError) as info:
        await OperatorStore(db).replay_webhook_delivery(actor, delivery["delivery_id"], reason)
    assert info.value.code == "INVALID_ACTION_REASON"
    assert len(await deliveries_of(db, hooked.participant_id)) == 1


async def test_an_unknown_delivery_is_not_found(db: Database) -> None:
    actor = await caller(db, TokenScope.OPERATOR)
    with pytest.raises(NotFoundError) as info:
        await OperatorStore(db).replay_webhook_delivery(
            actor, UUID("00000000-0000-0000-0000-000000000000"), "why")
    assert info.value.code == "UNKNOWN_WEBHOOK_DELIVERY"


async def test_a_second_replay_while_one_waits_lost_the_race_and_writes_nothing(
    db: Database, setup: tuple[Hooked, dict[str, Any]]
) -> None:
    hooked, delivery = setup
    actor = await caller(db, TokenScope.OPERATOR)
    ops = OperatorStore(db)
    first = await ops.replay_webhook_delivery(actor, delivery["delivery_id"], "first")
    # Asked again of the original, or of the waiting replay itself: that replay is the answer.
    for asked in (delivery["delivery_id"], first["delivery_id"]):
        again = await ops.replay_webhook_delivery(actor, asked, "double click")
        assert again["result"] == "REPLAY_PENDING" and again["action_id"] is None
        assert again["delivery_id"] == first["delivery_id"] and again["status"] == "PENDING"
    assert len(await deliveries_of(db, hooked.participant_id)) == 2
    assert len(await actions_on(db, delivery["delivery_id"])) == 1
    # Once that replay was sent, the delivery can be replayed again.
    await finish(db, first["delivery_id"])
    third = await ops.replay_webhook_delivery(actor, delivery["delivery_id"], "once more")
    assert third["result"] == "REPLAYED" and third["replay_of"] == delivery["delivery_id"]


async def test_replays_at_once_queue_exactly_one(
    db: Database, setup: tuple[Hooked, dict[str, Any]]
) -> None:
    hooked, delivery = setup
    actors = [await caller(db, TokenScope.OPERATOR, label=f"ops {n}") for n in range(4)]
    ops = OperatorStore(db)
    results = await asyncio.gather(*(
        ops.replay_webhook_delivery(a, delivery["delivery_id"], "at once") for a in actors))
    assert sorted(r["result"] for r in results) == ["REPLAYED"] + ["REPLAY_PENDING"] * 3
    assert len(await deliveries_of(db, hooked.participant_id)) == 2
    assert len(await actions_on(db, delivery["delivery_id"])) == 1


async def test_a_deleted_endpoint_is_not_replayed_and_nothing_is_written(
    db: Database, setup: tuple[Hooked, dict[str, Any]]
) -> None:
    hooked, delivery = setup
    await retire(db, hooked)
    actor = await caller(db, TokenScope.OPERATOR)
    lost = await OperatorStore(db).replay_webhook_delivery(actor, delivery["delivery_id"], "x")
    assert (lost["result"], lost["endpoint_status"], lost["status"]) == (
        "ENDPOINT_DELETED", "DELETED", "ABANDONED")
    assert lost["delivery_id"] == delivery["delivery_id"] and lost["action_id"] is None
    assert len(await deliveries_of(db, hooked.participant_id)) == 1
    assert await actions_on(db, delivery["delivery_id"]) == []


async def test_the_command_line_replay_is_recorded_with_the_operators_name(
    db: Database, setup: tuple[Hooked, dict[str, Any]]
) -> None:
    _, delivery = setup
    done = await WebhookStore(db).replay(delivery["delivery_id"], "ops-jane", "customer asked")
    assert done["result"] == "REPLAYED"
    [action] = await actions_on(db, delivery["delivery_id"])
    assert (action["actor_token_id"], action["actor_label"], action["reason"]) == (
        None, "ops-jane", "customer asked")
    assert action["recorded_by"] == "symphony_control_svc"
    again = await WebhookStore(db).replay(delivery["delivery_id"], "ops-jane")
    assert again["result"] == "REPLAY_PENDING"
