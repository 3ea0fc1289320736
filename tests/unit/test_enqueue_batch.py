"""Batched enqueue and the group commit: the guarantees of enqueue, item by item.

Each refusal `enqueue_payment_outbox` makes is made by the batch for that item alone, with the
same SQLSTATE and public code, while its neighbours are written (one bad item never fails the
others); replays, SY100, sequence order (I8), participant checks and privileges hold per item.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.support.outbox import instruction, payload, register_participant
from tests.unit import test_enqueue
from tests.unit.test_outbox_privileges import assert_sqlstate, refused

from symphony.db import (
    Database,
    IdempotencyConflictError,
    ParticipantNotActiveError,
    Role,
    SymphonyError,
    test_only,
)
from symphony.outbox import AccessStore, EnqueueResult, OutboxStore


def _cases(test: Any) -> list[Any]:
    """The refusal cases of a test in test_enqueue.py (its parametrize list)."""
    (mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    return list(mark.args[1])


OVERRIDES = [c[0] for c in _cases(test_enqueue.test_invalid_input_is_refused_with_its_own_code)]
PAYLOAD_CHANGES = [c[0] for c in _cases(test_enqueue.test_input_the_rails_cannot_take_is_refused)]
BAD = [*OVERRIDES, *({"payload": payload(**c)} for c in PAYLOAD_CHANGES),
       {"payload": payload(destination="acct\u0000x")}, {"participant_id": "nobody-here"}]


async def _registered(admin_dsn: str, instruction_id: str) -> int:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT count(*) AS n FROM symphony.payment_instruction_registry "
                   " WHERE instruction_id = %s", (instruction_id,))
    return int(rows[0]["n"])


@pytest.mark.parametrize("overrides", BAD, ids=lambda v: repr(v)[:50])
async def test_a_refused_item_gets_the_single_refusal_and_its_neighbours_are_written(
    db: Database, admin_dsn: str, overrides: dict[str, Any]
) -> None:
    store = OutboxStore(db)
    bad = instruction(**overrides)
    with pytest.raises(SymphonyError) as single:
        await store.enqueue(bad)
    before, after = instruction(), instruction()
    results = await store.enqueue_batch([before, bad, after])
    assert isinstance(results[0], EnqueueResult) and results[0].created
    assert isinstance(results[2], EnqueueResult) and results[2].created
    err = results[1]
    assert isinstance(err, SymphonyError)
    assert type(err) is type(single.value)
    assert (err.sqlstate, err.code) == (single.value.sqlstate, single.value.code)
    if bad.instruction_id:
        assert await _registered(admin_dsn, bad.instruction_id) == 0


async def test_replays_and_reused_keys_in_and_across_batches(db: Database) -> None:
    store = OutboxStore(db)
    first = instruction()
    other = instruction(instruction_id=first.instruction_id,
                        idempotency_key=first.idempotency_key, payload=payload(amount="1.00"))
    a, b, c = await store.enqueue_batch([first, first, other])
    assert isinstance(a, EnqueueResult) and isinstance(b, EnqueueResult)
    assert a.created and not b.created
    assert (b.outbox_id, b.sequence_id, b.created_at) == (a.outbox_id, a.sequence_id,
                                                            a.created_at)
    assert isinstance(c, IdempotencyConflictError) and c.sqlstate == "SY100"
    (again,) = await store.enqueue_batch([first])
    assert isinstance(again, EnqueueResult) and not again.created
    assert again.outbox_id == a.outbox_id
    single = await store.enqueue(first)
    assert (single.outbox_id, single.created) == (a.outbox_id, False)


async def test_sequence_ids_follow_the_batch_order_per_participant(db: Database) -> None:
    store = OutboxStore(db)
    p, q = await register_participant(db), await register_participant(db)
    items = [instruction(participant_id=p if i % 3 else q) for i in range(12)]
    results = await store.enqueue_batch(items)
    for who in (p, q):
        seqs = [r.sequence_id for r, i in zip(results, items, strict=True)
                if isinstance(r, EnqueueResult) and i.participant_id == who]
        assert seqs == list(range(1, len(seqs) + 1))
    after = await store.enqueue(instruction(participant_id=p))
    assert after.sequence_id == 9


async def test_a_revoked_participant_is_refused_in_a_batch(db: Database) -> None:
    store = OutboxStore(db)
    p = await register_participant(db)
    await AccessStore(db).revoke_participant(p)
    ok, refused_item = await store.enqueue_batch([instruction(), instruction(participant_id=p)])
    assert isinstance(ok, EnqueueResult)
    assert isinstance(refused_item, ParticipantNotActiveError)
    assert refused_item.sqlstate == "SY030"


async def test_a_batch_wakes_listeners(db: Database) -> None:
    async with db.listen(Role.EXECUTOR, "symphony_outbox_pending") as listener:
        await OutboxStore(db).enqueue_batch([instruction() for _ in range(5)])
        assert await listener.wait(5.0)


async def test_concurrent_batches_over_the_same_participants_do_not_deadlock(
    db: Database,
) -> None:
    store = OutboxStore(db)
    ps = [await register_participant(db) for _ in range(4)]

    async def batch(order: list[str]) -> list[tuple[str, Any]]:
        people = order * 3
        results = await store.enqueue_batch([instruction(participant_id=p) for p in people])
        return list(zip(people, results, strict=True))

    done = await asyncio.gather(*(batch(ps if n % 2 else ps[::-1]) for n in range(8)))
    pairs = [pair for rs in done for pair in rs]
    assert all(isinstance(r, EnqueueResult) for _, r in pairs)
    for p in ps:
        seqs = sorted(r.sequence_id for who, r in pairs if who == p)
        assert seqs == list(range(1, len(seqs) + 1))


async def test_the_batch_shape_is_checked(db: Database) -> None:
    with pytest.raises(SymphonyError) as info:
        await db.fetch_all(Role.INGEST, "enqueue_payment_outbox_batch", {
            "instruction_ids": ["a"], "idempotency_keys": [], "participant_ids": ["p"],
            "rail_types": ["RTP"], "payloads": ["{}"], "wake_after_commit": False})
    assert (info.value.sqlstate, info.value.code) == ("SY021", "INVALID_BATCH_SIZE")


# -- the group commit (the API's path) ------------------------------------------------------------

async def test_group_commit_answers_each_caller_with_its_own_result(db: Database) -> None:
    store = OutboxStore(db, group_commit=True)
    try:
        good = [instruction() for _ in range(40)]
        bad = instruction(payload=payload(amount="0"))
        same = instruction()
        calls = [store.enqueue(i) for i in [*good[:20], bad, same, same, *good[20:]]]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await store.aclose()
    assert isinstance(results[20], SymphonyError) and results[20].code == "INVALID_AMOUNT"
    ok = [r for k, r in enumerate(results) if k != 20]
    assert all(isinstance(r, EnqueueResult) for r in ok)
    a, b = results[21], results[22]
    assert isinstance(a, EnqueueResult) and isinstance(b, EnqueueResult)
    assert a.outbox_id == b.outbox_id and {a.created, b.created} == {True, False}
    # Each answer is committed: another transaction sees every item.
    for r in ok:
        assert isinstance(r, EnqueueResult)
        assert await store.item(r.outbox_id) is not None


async def test_group_commit_raises_the_items_error(db: Database) -> None:
    store = OutboxStore(db, group_commit=True)
    try:
        with pytest.raises(ParticipantNotActiveError):
            await store.enqueue(instruction(participant_id="not-registered-anyone"))
    finally:
        await store.aclose()


# -- what PostgreSQL cannot store never joins a batch (issue: one caller's NUL) -------------

# Every place a NUL or a lone surrogate can hide in an instruction: each text field, a payload
# value, a payload key, a nested value. Each is refused by the server as a whole parameter
# (the batch's jsonb[] or text[]), so it must be refused before the batch statement.
UNSTORABLE: list[tuple[dict[str, Any], str]] = [
    ({"payload": payload(metadata={"note": "a\u0000b"})}, "INVALID_CHARACTER"),
    ({"payload": payload(destination="GB29 NW\u0000BK 6016")}, "INVALID_CHARACTER"),
    ({"payload": payload(metadata={"n\u0000": "x"})}, "INVALID_CHARACTER"),
    ({"payload": payload(extra=[{"deep": ["\u0000"]}])}, "INVALID_CHARACTER"),
    ({"instruction_id": "instr-\u0000"}, "INVALID_CHARACTER"),
    ({"idempotency_key": "key-\u0000"}, "INVALID_CHARACTER"),
    ({"rail_type": "SEPA_CT\u0000"}, "INVALID_CHARACTER"),
    ({"participant_id": "participant\u0000"}, "INVALID_CHARACTER"),
    ({"payload": payload(destination="acct-\udcff")}, "INVALID_TEXT_ENCODING"),
    ({"payload": payload(metadata={"\ud800": "x"})}, "INVALID_TEXT_ENCODING"),
    ({"instruction_id": "instr-\udfff"}, "INVALID_TEXT_ENCODING"),
]


async def _transactions_of(admin_dsn: str, results: list[Any]) -> set[str]:
    """The ids of the transactions that wrote these items' registry rows (xmin)."""
    ids = [r.outbox_id for r in results]
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT xmin::text AS tx FROM symphony.payment_instruction_registry "
                   " WHERE outbox_id = ANY(%s)", (ids,))
    assert len(rows) == len(ids)
    return {str(r["tx"]) for r in rows}


@pytest.mark.parametrize(("overrides", "code"), UNSTORABLE, ids=lambda v: ascii(v)[:40])
async def test_an_unstorable_item_leaves_its_neighbours_in_one_batch_transaction(
    db: Database, admin_dsn: str, overrides: dict[str, Any], code: str
) -> None:
    # Failed on main: the server refused the whole batch, and each of the 9 good items was
    # then committed alone (9 transactions).
    store = OutboxStore(db)
    bad = instruction(**overrides)
    with pytest.raises(SymphonyError) as single:
        await store.enqueue(bad)
    good = [instruction() for _ in range(9)]
    results = await store.enqueue_batch([*good[:4], bad, *good[4:]])
    refused_item = results.pop(4)
    assert isinstance(refused_item, SymphonyError)
    assert refused_item.code == single.value.code == code
    assert all(isinstance(r, EnqueueResult) and r.created for r in results)
    assert len(await _transactions_of(admin_dsn, results)) == 1
    if "\x00" not in bad.instruction_id and bad.instruction_id.isascii():
        assert await _registered(admin_dsn, bad.instruction_id) == 0


async def test_a_nul_in_the_group_commit_does_not_split_its_neighbours(
    db: Database, admin_dsn: str
) -> None:
    # Failed on main: 60 concurrent callers, one with a NUL: the other 59 committed one
    # transaction each. Now the NUL is refused before it joins a batch: the first caller
    # goes alone (nothing was committing yet) and everyone else shares the next batch.
    store = OutboxStore(db, group_commit=True)
    good = [instruction() for _ in range(59)]
    bad = instruction(payload=payload(metadata={"note": "a\u0000b"}))
    try:
        results = await asyncio.gather(*(store.enqueue(i) for i in [*good[:30], bad, *good[30:]]),
                                       return_exceptions=True)
    finally:
        await store.aclose()
    refused_item = results.pop(30)
    assert isinstance(refused_item, SymphonyError) and refused_item.code == "INVALID_CHARACTER"
    assert all(isinstance(r, EnqueueResult) for r in results)
    assert len(await _transactions_of(admin_dsn, results)) <= 2


async def test_callers_answered_together_share_their_next_batch(
    db: Database, admin_dsn: str
) -> None:
    # Failed on main: the first caller back after a batch's answers started the next batch
    # at once, alone, and the other 15 waited for its commit: 16 callers calling 3 times each
    # took 6 transactions (batches of 1 and 15 in turn) instead of 3.
    store = OutboxStore(db, group_commit=True)
    results: list[EnqueueResult] = []

    async def caller() -> None:
        for _ in range(3):
            results.append(await store.enqueue(instruction()))

    try:
        await asyncio.gather(*(caller() for _ in range(16)))
    finally:
        await store.aclose()
    assert len(results) == 48 and all(r.created for r in results)
    assert len(await _transactions_of(admin_dsn, results)) == 3


async def test_aclose_commits_what_was_gathered_but_not_started(db: Database) -> None:
    store = OutboxStore(db, group_commit=True)
    calls = [asyncio.ensure_future(store.enqueue(instruction())) for _ in range(5)]
    await asyncio.sleep(0)  # every call has joined; the batch is only scheduled
    await store.aclose()
    assert all(c.done() and isinstance(c.result(), EnqueueResult) for c in calls)


# -- privileges ------------------------------------------------------------------------------------

BATCH_CALL = ("SELECT * FROM symphony.enqueue_payment_outbox_batch("
              "ARRAY['i'], ARRAY['k'], ARRAY['participant-test'], ARRAY['RTP'], "
              "ARRAY['{}'::jsonb], false)")
CHECK_CALL = ("SELECT symphony.enqueue_check_input('i', 'k', 'participant-test', 'RTP', "
              "'{}'::jsonb)")


async def test_ingest_may_run_the_batch(db: Database) -> None:
    rows = await test_only.execute_as_role(db, Role.INGEST, BATCH_CALL)
    assert rows is not None


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.INGEST])
async def test_no_other_role_runs_the_batch(db: Database, role: Role) -> None:
    assert_sqlstate(await refused(db, role, BATCH_CALL), "42501")


@pytest.mark.parametrize("role", list(Role))
async def test_no_role_runs_the_validation_itself(db: Database, role: Role) -> None:
    assert_sqlstate(await refused(db, role, CHECK_CALL), "42501")


# -- waking the workers after the commit ----------------------------------------------------------

async def test_a_batch_marked_wake_after_commit_notifies_only_when_asked(db: Database) -> None:
    store = OutboxStore(db)
    async with db.listen(Role.EXECUTOR, "symphony_outbox_pending") as listener:
        results = await store.enqueue_batch([instruction()], wake_after_commit=True)
        assert isinstance(results[0], EnqueueResult) and results[0].created
        assert not await listener.wait(0.3)
        await store.wake_workers()
        assert await listener.wait(5.0)
        # The mark ends with the batch function: a single enqueue in a later transaction
        # still notifies from the trigger.
        await store.enqueue(instruction())
        assert await listener.wait(5.0)


async def test_the_group_commit_wakes_listeners(db: Database) -> None:
    store = OutboxStore(db, group_commit=True)
    try:
        async with db.listen(Role.EXECUTOR, "symphony_outbox_pending") as listener:
            await asyncio.gather(*(store.enqueue(instruction()) for _ in range(10)))
            assert await listener.wait(5.0)
    finally:
        await store.aclose()


WAKE_CALL = "SELECT symphony.wake_outbox_workers()"


async def test_ingest_may_wake_the_workers(db: Database) -> None:
    assert await test_only.execute_as_role(db, Role.INGEST, WAKE_CALL) is not None


@pytest.mark.parametrize("role", [r for r in Role if r is not Role.INGEST])
async def test_no_other_role_wakes_the_workers(db: Database, role: Role) -> None:
    assert_sqlstate(await refused(db, role, WAKE_CALL), "42501")


@pytest.mark.parametrize("overrides", [o for o in OVERRIDES if "participant_id" not in o],
                         ids=lambda v: repr(v)[:50])
async def test_a_revoked_participants_bad_instruction_gets_the_same_refusal_on_both_paths(
    db: Database, overrides: dict[str, Any]
) -> None:
    """The order of the one validation (enqueue_check_input: the ids' forms, then the
    participant, then the rail and the payload) is the same alone and in a batch: a bad
    instruction from a revoked participant gets one and the same refusal on both paths."""
    store = OutboxStore(db)
    p = await register_participant(db)
    await AccessStore(db).revoke_participant(p)
    bad = instruction(participant_id=p, **overrides)
    with pytest.raises(SymphonyError) as single:
        await store.enqueue(bad)
    [err] = await store.enqueue_batch([bad])
    assert isinstance(err, SymphonyError)
    assert (err.sqlstate, err.code) == (single.value.sqlstate, single.value.code)
    # Where the participant stands in that order: after the ids' forms, before the rest.
    expected_first = {"instruction_id", "idempotency_key"} & overrides.keys()
    assert (single.value.sqlstate == "SY030") is not bool(expected_first)
