"""Enqueue: validated in the database, idempotent for ever (I1), sequenced per participant (I8)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from tests.support.outbox import instruction, payload, register_participant

from symphony.db import (
    Database,
    IdempotencyConflictError,
    InvalidRequestError,
    Role,
    test_only,
)
from symphony.outbox import Completion, OutboxStore, Outcome

LONG = "x" * 300


def _nested(levels: int) -> Any:
    """`levels` levels of objects: _nested(1) is {"n": "leaf"}."""
    value: Any = "leaf"
    for _ in range(levels):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    ("overrides", "sqlstate", "code"),
    [
        ({"instruction_id": ""}, "SY011", "INVALID_INSTRUCTION_ID"),
        ({"instruction_id": "a" * 129}, "SY011", "INVALID_INSTRUCTION_ID"),
        ({"instruction_id": "has space"}, "SY011", "INVALID_INSTRUCTION_ID"),
        ({"idempotency_key": ""}, "SY012", "INVALID_IDEMPOTENCY_KEY"),
        ({"idempotency_key": "k" * 256}, "SY012", "INVALID_IDEMPOTENCY_KEY"),
        ({"idempotency_key": "tab\there"}, "SY012", "INVALID_IDEMPOTENCY_KEY"),
        ({"participant_id": ""}, "SY013", "INVALID_PARTICIPANT_ID"),
        ({"rail_type": "CARRIER_PIGEON"}, "SY014", "UNKNOWN_RAIL_TYPE"),
        ({"payload": []}, "SY015", "INVALID_PAYLOAD"),
        ({"payload": payload(amount="0")}, "SY016", "INVALID_AMOUNT"),
        ({"payload": payload(amount="-5.00")}, "SY016", "INVALID_AMOUNT"),
        ({"payload": payload(amount="1e9")}, "SY016", "INVALID_AMOUNT"),
        ({"payload": payload(amount="1.123456789")}, "SY016", "INVALID_AMOUNT"),
        ({"payload": payload(amount=None)}, "SY016", "INVALID_AMOUNT"),
        # JSON numbers are refused: a reader could round them before the rail sees them.
        ({"payload": payload(amount=12)}, "SY016", "INVALID_AMOUNT"),
        ({"payload": payload(amount=12345678901.12345678)}, "SY016", "INVALID_AMOUNT"),
        ({"payload": {"currency": "EUR", "destination": "d"}}, "SY016", "INVALID_AMOUNT"),
        ({"payload": payload(currency="eur")}, "SY017", "INVALID_CURRENCY"),
        ({"payload": payload(currency="EURO")}, "SY017", "INVALID_CURRENCY"),
        ({"payload": payload(currency=978)}, "SY017", "INVALID_CURRENCY"),
        ({"payload": payload(destination="")}, "SY018", "INVALID_DESTINATION"),
        ({"payload": payload(destination=LONG)}, "SY018", "INVALID_DESTINATION"),
        ({"payload": payload(destination=7)}, "SY018", "INVALID_DESTINATION"),
        ({"payload": payload(memo="m" * 17000)}, "SY019", "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_invalid_input_is_refused_with_its_own_code(
    db: Database, admin_dsn: str, overrides: dict[str, Any], sqlstate: str, code: str
) -> None:
    bad = instruction(**overrides)
    with pytest.raises(InvalidRequestError) as info:
        await OutboxStore(db).enqueue(bad)
    assert info.value.sqlstate == sqlstate
    assert info.value.code == code
    # Nothing half-written: no registry row for the refused instruction.
    rows = await test_only.query_no_role(
        admin_dsn,
        "SELECT count(*) AS n FROM symphony.payment_instruction_registry "
        " WHERE instruction_id = %s",
        (bad.instruction_id,),
    )
    assert rows[0]["n"] == 0


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("0.01", "EUR"), ("12", "EUR"), ("12.5", "EUR"), ("999999999999999.99", "EUR"),
     ("1500", "JPY"), ("1.005", "KWD"), ("7", "CLP")],
)
async def test_valid_amount_forms_are_accepted(db: Database, amount: str, currency: str) -> None:
    result = await OutboxStore(db).enqueue(
        instruction(payload=payload(amount=amount, currency=currency)))
    assert result.created


async def test_replay_returns_the_same_item(db: Database, admin_dsn: str) -> None:
    store = OutboxStore(db)
    original = instruction()
    first = await store.enqueue(original)
    # Key order in the payload is not part of the request's identity (JSON objects).
    reordered = instruction(
        instruction_id=original.instruction_id, idempotency_key=original.idempotency_key,
        participant_id=original.participant_id, rail_type=original.rail_type,
        payload=dict(reversed(list(original.payload.items()))),
    )
    second = await store.enqueue(reordered)
    assert first.created and not second.created
    assert (second.outbox_id, second.sequence_id) == (first.outbox_id, first.sequence_id)
    rows = await test_only.query_no_role(
        admin_dsn,
        "SELECT (SELECT count(*) FROM symphony.payment_instruction_registry "
        "         WHERE outbox_id = %(id)s) AS registry, "
        "       (SELECT count(*) FROM symphony.payment_outbox_pending "
        "         WHERE outbox_id = %(id)s) AS pending",
        {"id": first.outbox_id},
    )
    assert rows == [{"registry": 1, "pending": 1}]


@pytest.mark.parametrize(
    "change",
    [
        {"rail_type": "ACH"},
        {"payload": payload(amount="125.51")},
    ],
    ids=["rail", "payload"],
)
async def test_reused_key_with_a_different_request_is_refused(
    db: Database, change: dict[str, Any]
) -> None:
    store = OutboxStore(db)
    original = instruction()
    await store.enqueue(original)
    fields = {
        "instruction_id": original.instruction_id, "idempotency_key": original.idempotency_key,
        "participant_id": original.participant_id, "rail_type": original.rail_type,
        "payload": original.payload, **change,
    }
    with pytest.raises(IdempotencyConflictError) as info:
        await store.enqueue(instruction(**fields))
    assert info.value.sqlstate == "SY100"


async def test_key_is_remembered_after_the_item_is_terminal(isolated_db: Database) -> None:
    store = OutboxStore(isolated_db)
    original = instruction()
    first = await store.enqueue(original)
    [item] = [c for c in await store.claim("w", 1000, 60) if c.outbox_id == first.outbox_id]
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-test"))
    replay = await store.enqueue(original)
    assert replay.outbox_id == first.outbox_id
    assert not replay.created and replay.state == "DISPATCHED"


async def test_sequence_ids_increase_per_participant(db: Database) -> None:
    store = OutboxStore(db)
    participant = await register_participant(db)
    other = await register_participant(db)
    mine = [
        (await store.enqueue(instruction(participant_id=participant))).sequence_id
        for _ in range(5)
    ]
    theirs = (await store.enqueue(instruction(participant_id=other))).sequence_id
    assert mine == [1, 2, 3, 4, 5]
    assert theirs == 1


async def test_refused_replay_burns_no_sequence_number(db: Database) -> None:
    store = OutboxStore(db)
    original = instruction()
    first = await store.enqueue(original)
    await store.enqueue(original)  # replay
    with pytest.raises(IdempotencyConflictError):
        await store.enqueue(instruction(
            instruction_id=original.instruction_id, idempotency_key=original.idempotency_key,
            participant_id=original.participant_id, rail_type="ACH", payload=original.payload))
    nxt = await store.enqueue(instruction(participant_id=original.participant_id))
    assert nxt.sequence_id == first.sequence_id + 1


async def test_enqueue_wakes_listeners(db: Database) -> None:
    async with db.listen(Role.EXECUTOR, "symphony_outbox_pending") as listener:
        await OutboxStore(db).enqueue(instruction())
        assert await listener.wait(timeout=5.0)


async def test_enqueue_rides_on_a_wake_up_in_flight(db: Database, admin_dsn: str) -> None:
    """While another transaction holds the wake-up lock (it notifies at its commit), an enqueue
    neither notifies nor waits for it; once that transaction ended, the next one notifies."""
    store = OutboxStore(db)
    async with await psycopg.AsyncConnection.connect(admin_dsn) as other:
        await other.execute("SELECT pg_advisory_xact_lock(7302, 1)")
        async with db.listen(Role.EXECUTOR, "symphony_outbox_pending") as listener:
            result = await asyncio.wait_for(store.enqueue(instruction()), timeout=10)
            assert result.created
            assert not await listener.wait(timeout=0.3)
            await other.rollback()
            await store.enqueue(instruction())
            assert await listener.wait(timeout=5.0)


async def test_replay_does_not_notify(db: Database) -> None:
    store = OutboxStore(db)
    original = instruction()
    await store.enqueue(original)
    async with db.listen(Role.EXECUTOR, "symphony_outbox_pending") as listener:
        await store.enqueue(original)
        assert not await listener.wait(timeout=0.3)


async def test_payload_is_stored_as_sent(db: Database, admin_dsn: str) -> None:
    sent = payload(amount="10.10", memo="rent", nested={"a": [1, 2]})
    result = await OutboxStore(db).enqueue(instruction(payload=sent))
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT payload FROM symphony.payment_instruction_registry "
                   " WHERE outbox_id = %s", (result.outbox_id,))
    assert rows[0]["payload"] == json.loads(json.dumps(sent))


# -- input the rails cannot take (each refused on the main line before migration 0007 added
# the check, except where it says otherwise) ---------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "sqlstate", "code", "constraint"),
    [
        ({"currency": "XXX"}, "SY017", "INVALID_CURRENCY", "enqueue_payload_currency_known"),
        ({"currency": "XTS"}, "SY017", "INVALID_CURRENCY", "enqueue_payload_currency_known"),
        ({"currency": "XAU"}, "SY017", "INVALID_CURRENCY", "enqueue_payload_currency_known"),
        ({"currency": "ABC"}, "SY017", "INVALID_CURRENCY", "enqueue_payload_currency_known"),
        ({"currency": "JPY", "amount": "1.5"}, "SY016", "INVALID_AMOUNT",
         "enqueue_payload_amount_minor_units"),
        ({"currency": "USD", "amount": "1.005"}, "SY016", "INVALID_AMOUNT",
         "enqueue_payload_amount_minor_units"),
        ({"currency": "KWD", "amount": "1.0005"}, "SY016", "INVALID_AMOUNT",
         "enqueue_payload_amount_minor_units"),
        ({"currency": "JPY", "amount": "100.0"}, "SY016", "INVALID_AMOUNT",
         "enqueue_payload_amount_minor_units"),
        ({"destination": "acct\x01"}, "SY018", "INVALID_DESTINATION",
         "enqueue_payload_destination_characters"),
        ({"destination": "acct\nnext"}, "SY018", "INVALID_DESTINATION",
         "enqueue_payload_destination_characters"),
        ({"destination": "acct\x7f"}, "SY018", "INVALID_DESTINATION",
         "enqueue_payload_destination_characters"),
        ({"destination": "acct\x85"}, "SY018", "INVALID_DESTINATION",
         "enqueue_payload_destination_characters"),
        ({"destination": "acct\x9f"}, "SY018", "INVALID_DESTINATION",
         "enqueue_payload_destination_characters"),
        *[({"destination": f"ACCT-1{ch}9-TCCA"}, "SY018", "INVALID_DESTINATION",
           "enqueue_payload_destination_characters")
          for ch in ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067",
                     "\u2068", "\u2069", "\u200e", "\u200f")],
        ({"metadata": "note"}, "SY015", "INVALID_METADATA", "enqueue_payload_metadata"),
        ({"metadata": ["a"]}, "SY015", "INVALID_METADATA", "enqueue_payload_metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(21)}}, "SY015", "INVALID_METADATA",
         "enqueue_payload_metadata"),
        ({"metadata": {"": "v"}}, "SY015", "INVALID_METADATA", "enqueue_payload_metadata"),
        ({"metadata": {"k" * 41: "v"}}, "SY015", "INVALID_METADATA",
         "enqueue_payload_metadata"),
        ({"metadata": {"k": "v" * 501}}, "SY015", "INVALID_METADATA",
         "enqueue_payload_metadata"),
        ({"metadata": {"k": 1}}, "SY015", "INVALID_METADATA", "enqueue_payload_metadata"),
        ({"metadata": {"k": {"nested": "x"}}}, "SY015", "INVALID_METADATA",
         "enqueue_payload_metadata"),
        ({"extra": _nested(33)}, "SY019", "PAYLOAD_TOO_COMPLEX", "enqueue_payload_depth"),
        ({"extra": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
         "SY019", "PAYLOAD_TOO_COMPLEX", "enqueue_payload_depth"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
async def test_input_the_rails_cannot_take_is_refused(
    db: Database, admin_dsn: str, changes: dict[str, Any], sqlstate: str, code: str,
    constraint: str,
) -> None:
    bad = instruction(payload=payload(**changes))
    with pytest.raises(InvalidRequestError) as info:
        await OutboxStore(db).enqueue(bad)
    assert (info.value.sqlstate, info.value.code) == (sqlstate, code)
    cause = info.value.__cause__
    assert getattr(getattr(cause, "diag", None), "constraint_name", None) == constraint
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT count(*) AS n FROM symphony.payment_instruction_registry "
                   " WHERE instruction_id = %s", (bad.instruction_id,))
    assert rows[0]["n"] == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"currency": "JPY", "amount": "1500"},
        {"currency": "USD", "amount": "1.50"},
        {"currency": "BHD", "amount": "0.125"},
        {"currency": "XOF", "amount": "5000"},
        {"destination": "Ünïcödé 账户 — acct"},
        {"metadata": {f"k{i}": "v" * 500 for i in range(20)}},
        {"metadata": {"k" * 40: ""}},
        {"extra": _nested(31)},  # 32 levels with the payload itself
    ],
)
async def test_input_at_the_limits_is_accepted(db: Database, changes: dict[str, Any]) -> None:
    assert (await OutboxStore(db).enqueue(instruction(payload=payload(**changes)))).created


async def test_a_payload_nested_100000_deep_answers_a_mapped_code(db: Database) -> None:
    # Before migration 0007 this left symphony.db as the unmapped DATABASE_ERROR (54001: the
    # server's JSON parser runs out of stack before the function is even called).
    deep = '{"amount": "1.00", "currency": "EUR", "destination": "d", "x": ' + (
        "[" * 100_000) + ("]" * 100_000) + "}"
    i = instruction()
    with pytest.raises(InvalidRequestError) as info:
        async with db.transaction(Role.INGEST) as tx:
            await tx.fetch_one("enqueue_payment_outbox", {
                "instruction_id": i.instruction_id, "idempotency_key": i.idempotency_key,
                "participant_id": i.participant_id, "rail_type": i.rail_type, "payload": deep})
    assert (info.value.sqlstate, info.value.code) == ("54001", "PAYLOAD_TOO_COMPLEX")


async def test_a_payload_too_deep_for_python_is_refused_before_the_database(
    db: Database,
) -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidRequestError) as info:
        await OutboxStore(db).enqueue(instruction(payload=payload(extra=deep)))
    assert info.value.code == "PAYLOAD_TOO_COMPLEX"


async def test_a_nul_character_is_refused_with_its_own_code(db: Database) -> None:
    # PostgreSQL text cannot hold U+0000: the JSON parser refuses it before the function runs.
    with pytest.raises(InvalidRequestError) as info:
        await OutboxStore(db).enqueue(instruction(payload=payload(destination="acct\u0000x")))
    assert (info.value.sqlstate, info.value.code) == ("22P05", "INVALID_CHARACTER")
