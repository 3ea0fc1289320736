"""Payment events, written by the database (migration `payment_events`):

* each change a participant cares about has its event, in the same transaction as its cause:
  created (single and batched enqueue), dispatched, failed, under_review (and the review's
  resolution);
* numbered per participant from 1 without gaps, also after a rolled-back writer; a writer
  holds its participant's next number until it commits, and only its own participant's;
* two completion batches over the same participants in opposite orders never deadlock;
* append-only for every role, the owner too; read only through the participant's own scope;
* the reads use their indexes (plans pinned).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from tests.support.database import make_due, unique
from tests.support.outbox import instruction, register_participant

from symphony.db import (
    Database,
    InvalidRequestError,
    InvariantViolationError,
    PermissionDeniedError,
    Role,
    SymphonyError,
    test_only,
)
from symphony.outbox import ClaimedItem, Completion, OutboxStore, Outcome, ReviewDecision
from symphony.outbox.events import EventStore, EventType, payment_of, public_event_id


async def _events(admin_dsn: str, participant_id: str) -> list[dict[str, Any]]:
    return await test_only.query_no_role(
        admin_dsn,
        "SELECT event_seq, event_type, outbox_id, payload FROM symphony.payment_events "
        " WHERE participant_id = %s ORDER BY event_seq", (participant_id,))


async def _claim_all(store: OutboxStore, *outbox_ids: UUID) -> dict[UUID, ClaimedItem]:
    wanted = set(outbox_ids)
    claimed = {c.outbox_id: c for c in await store.claim(unique("w"), 1000, 60)
               if c.outbox_id in wanted}
    assert set(claimed) == wanted, "every item is due and claimable"
    return claimed


@pytest.fixture
async def policy(isolated_admin_dsn: str) -> AsyncIterator[str]:
    """A two-attempt ceiling with no backoff and no settle time; defaults restored after."""
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.outbox_retry_policy SET max_attempts = 2, backoff_base_ms = 0, "
        "backoff_max_ms = 0, ambiguous_settle_ms = 0")
    yield isolated_admin_dsn
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.outbox_retry_policy SET max_attempts = 8, backoff_base_ms = 1000, "
        "backoff_max_ms = 300000, ambiguous_settle_ms = 30000, zombie_threshold_seconds = 120")


# -- each cause writes its event --------------------------------------------------------------------


async def test_enqueue_writes_created_with_the_payment_as_get_shows_it(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    result = await store.enqueue(instruction(participant_id=pid))
    replay = await store.enqueue(instruction(
        participant_id=pid, instruction_id="x-1", idempotency_key="k-1"))
    await store.enqueue(instruction(participant_id=pid, instruction_id="x-1",
                                    idempotency_key="k-1"))  # a replay: no second event
    rows = await _events(isolated_admin_dsn, pid)
    assert [(r["event_seq"], r["event_type"], r["outbox_id"]) for r in rows] == [
        (1, "payment.created", result.outbox_id), (2, "payment.created", replay.outbox_id)]
    payment, attempts = payment_of(rows[0]["payload"])
    assert payment == await store.payment_for(pid, result.outbox_id)
    assert attempts == [] and payment.state == "PENDING"
    assert "participant_id" not in rows[0]["payload"] and "sequence_id" not in rows[0]["payload"]


async def test_a_batch_writes_one_created_per_new_item_numbered_per_participant(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    a, b = await register_participant(isolated_db), await register_participant(isolated_db)
    batch = [instruction(participant_id=p) for p in (b, a, b, a, a)]
    bad = instruction(participant_id=a, payload={"amount": "-1", "currency": "EUR",
                                                 "destination": "d"})
    results = await store.enqueue_batch([*batch, bad])
    assert isinstance(results[-1], InvalidRequestError)
    for pid, count in ((a, 3), (b, 2)):
        rows = await _events(isolated_admin_dsn, pid)
        assert [r["event_seq"] for r in rows] == list(range(1, count + 1))
        assert {r["event_type"] for r in rows} == {"payment.created"}
        mine = [r.outbox_id for r, i in zip(results, batch, strict=False)
                if i.participant_id == pid and not isinstance(r, BaseException)]
        assert [r["outbox_id"] for r in rows] == mine, "in the batch's order"


async def test_completions_write_dispatched_and_failed_retries_write_nothing(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    ok, bad, later = [(await store.enqueue(instruction(participant_id=pid))).outbox_id
                      for _ in range(3)]
    claimed = await _claim_all(store, ok, bad, later)
    await store.complete_batch([
        Completion(ok, claimed[ok].lease_token, Outcome.DISPATCHED, rail_transaction_id="rtx-1"),
        Completion(bad, claimed[bad].lease_token, Outcome.FAILED, error_code="DECLINED"),
        Completion(later, claimed[later].lease_token, Outcome.RETRYABLE, error_code="BUSY"),
    ])
    rows = await _events(isolated_admin_dsn, pid)
    assert [(r["event_seq"], r["event_type"]) for r in rows[3:]] == [
        (4, "payment.dispatched"), (5, "payment.failed")]
    payment, attempts = payment_of(rows[3]["payload"])
    assert payment.state == "DISPATCHED" and payment.terminal_at is not None
    assert [a.state for a in attempts] == ["DISPATCHING", "DISPATCHED"]
    assert attempts == await store.attempts_for(pid, ok)
    assert payment == await store.payment_for(pid, ok)
    assert payment_of(rows[4]["payload"])[0].last_error_code == "DECLINED"


async def test_entering_review_writes_under_review_and_the_resolution_its_outcome(
    isolated_db: Database, policy: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    first = await _claim_all(store, outbox_id)
    await store.complete(Completion(outbox_id, first[outbox_id].lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    await make_due(policy, outbox_id)
    second = await _claim_all(store, outbox_id)
    await store.complete(Completion(outbox_id, second[outbox_id].lease_token, Outcome.FAILED,
                                    error_code="DECLINED"))
    types = [r["event_type"] for r in await _events(policy, pid)]
    assert types == ["payment.created", "payment.under_review"]
    await store.resolve_review(outbox_id, ReviewDecision.DISPATCHED, decided_by="ops",
                               reason="confirmed by the rail", rail_transaction_id="rtx-9")
    rows = await _events(policy, pid)
    assert [r["event_type"] for r in rows] == [
        "payment.created", "payment.under_review", "payment.dispatched"]
    assert payment_of(rows[-1]["payload"])[0].state == "DISPATCHED"


# -- numbering ------------------------------------------------------------------------------------------


async def test_a_rolled_back_writer_leaves_no_gap(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    await store.enqueue(instruction(participant_id=pid))
    with psycopg.connect(isolated_admin_dsn) as conn:
        conn.execute(
            "SELECT * FROM symphony.enqueue_payment_outbox('gone', 'gone', %s, 'ACH', "
            "  '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}')", (pid,))
        conn.rollback()
    await store.enqueue(instruction(participant_id=pid))
    assert [r["event_seq"] for r in await _events(isolated_admin_dsn, pid)] == [1, 2]


async def test_a_writer_holds_only_its_own_participants_next_number(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    a, b = await register_participant(isolated_db), await register_participant(isolated_db)
    body = "'{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}'"
    enqueue = ("SELECT outbox_id FROM symphony.enqueue_payment_outbox(%s, %s, %s, 'ACH', "
               + body + ")")
    with psycopg.connect(isolated_admin_dsn) as first, \
            psycopg.connect(isolated_admin_dsn) as other, \
            psycopg.connect(isolated_admin_dsn) as same:
        first.execute(enqueue, ("i-1", "k-1", a))  # open: a's event 1 is numbered, uncommitted
        other.execute("SET lock_timeout = '2s'")
        other.execute(enqueue, ("i-2", "k-2", b))  # another participant does not wait
        other.commit()
        same.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            # Waits for a's counter (and its sequence row): event 2 cannot commit before 1.
            same.execute(enqueue, ("i-3", "k-3", a))
        same.rollback()
        first.commit()
    assert [r["event_seq"] for r in await _events(isolated_admin_dsn, a)] == [1]
    assert [r["event_seq"] for r in await _events(isolated_admin_dsn, b)] == [1]


async def test_completion_batches_in_opposite_orders_do_not_deadlock(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pids = [await register_participant(isolated_db) for _ in range(4)]
    for _ in range(5):
        items = {pid: [(await store.enqueue(instruction(participant_id=pid))).outbox_id
                       for _ in range(2)] for pid in pids}
        claimed = await _claim_all(store, *[i for ids in items.values() for i in ids])
        forward = [ids[0] for ids in items.values()]
        backward = [ids[1] for ids in reversed(items.values())]

        async def complete(ids: list[UUID], leases: dict[UUID, ClaimedItem]) -> None:
            await store.complete_batch([
                Completion(i, leases[i].lease_token, Outcome.DISPATCHED,
                           rail_transaction_id=f"rtx-{i}") for i in ids])

        await asyncio.gather(complete(forward, claimed), complete(backward, claimed))
    for pid in pids:
        seqs = [r["event_seq"] for r in await _events(isolated_admin_dsn, pid)]
        assert seqs == list(range(1, 21)), "10 created and 10 dispatched, without a gap"


# -- append-only and scoped -------------------------------------------------------------------------


async def test_the_owner_cannot_rewrite_or_remove_events(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    pid = await register_participant(isolated_db)
    await OutboxStore(isolated_db).enqueue(instruction(participant_id=pid))
    for statement in (
        "UPDATE symphony.payment_events SET event_type = 'payment.failed'",
        "DELETE FROM symphony.payment_events",
        "TRUNCATE symphony.payment_events",
        "UPDATE symphony.participant_event_sequences SET last_event_seq = 1",
        "DELETE FROM symphony.participant_event_sequences",
    ):
        with pytest.raises(InvariantViolationError) as info:
            await test_only.query_as_owner(isolated_admin_dsn, statement)
        assert info.value.sqlstate == "P0001"
    assert len(await _events(isolated_admin_dsn, pid)) == 1


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("statement", [
    "UPDATE symphony.payment_events SET event_type = 'payment.failed'",
    "DELETE FROM symphony.payment_events",
    "TRUNCATE symphony.payment_events",
    "INSERT INTO symphony.payment_events (participant_id, event_seq, event_type, outbox_id, "
    " payload) VALUES ('p', 1, 'payment.created', gen_random_uuid(), '{}')",
])
async def test_no_runtime_role_writes_events(db: Database, role: Role, statement: str) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(db, role, statement)
    assert info.value.sqlstate == "42501"


async def test_the_auditor_reads_the_event_table(db: Database) -> None:
    rows = await test_only.execute_as_role(
        db, Role.AUDITOR, "SELECT count(*) AS n FROM symphony.payment_events")
    assert rows[0]["n"] >= 0


@pytest.mark.parametrize("role", [Role.READONLY, Role.INGEST, Role.EXECUTOR, Role.CONTROL])
async def test_other_roles_cannot_read_the_event_table(db: Database, role: Role) -> None:
    with pytest.raises(PermissionDeniedError):
        await test_only.execute_as_role(db, role, "SELECT 1 FROM symphony.payment_events")


async def test_readonly_reads_a_participants_events_through_the_function(db: Database) -> None:
    pid = await register_participant(db)
    result = await OutboxStore(db).enqueue(instruction(participant_id=pid))
    events = await EventStore(db).events_for(pid)
    assert [(e.event_seq, e.event_type, e.outbox_id) for e in events] == [
        (1, EventType.CREATED, result.outbox_id)]
    assert events[0].public_id == public_event_id(events[0].event_id)
    assert events[0].public_id.startswith("evt_") and len(events[0].public_id) == 36


@pytest.mark.parametrize("role", [Role.INGEST, Role.EXECUTOR, Role.AUDITOR, Role.CONTROL])
async def test_other_roles_cannot_call_the_event_read(db: Database, role: Role) -> None:
    with pytest.raises(PermissionDeniedError):
        await test_only.execute_as_role(
            db, role, "SELECT * FROM symphony.participant_events('p1', 0, 10, NULL)")


async def test_a_participant_reads_only_its_own_events_by_cursor_and_type(
    isolated_db: Database,
) -> None:
    store, events = OutboxStore(isolated_db), EventStore(isolated_db)
    a, b = await register_participant(isolated_db), await register_participant(isolated_db)
    mine = [(await store.enqueue(instruction(participant_id=a))).outbox_id for _ in range(5)]
    await store.enqueue(instruction(participant_id=b))
    claimed = await _claim_all(store, mine[1])
    await store.complete(Completion(mine[1], claimed[mine[1]].lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-1"))
    page = await events.events_for(a, after=2, limit=2)
    assert [e.event_seq for e in page] == [3, 4]
    assert {e.outbox_id for e in await events.events_for(a, limit=200)} == set(mine)
    dispatched = await events.events_for(a, event_type="payment.dispatched")
    assert [(e.event_seq, e.outbox_id) for e in dispatched] == [(6, mine[1])]
    assert [e.event_seq for e in await events.events_for(b)] == [1]


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"limit": 0}, "INVALID_BATCH_SIZE"),
    ({"limit": 201}, "INVALID_BATCH_SIZE"),
    ({"after": -1}, "INVALID_EVENT_CURSOR"),
    ({"event_type": "payment.unknown"}, "INVALID_EVENT_TYPE"),
])
async def test_bad_reads_are_refused_with_a_code(
    db: Database, kwargs: dict[str, Any], code: str
) -> None:
    with pytest.raises(SymphonyError) as info:
        await EventStore(db).events_for("p1", **kwargs)
    assert isinstance(info.value, InvalidRequestError)
    assert info.value.code == code


# -- plans ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_events(isolated_settings: Any) -> str:
    """Three participants with 2100 events each: 2000 created, 100 dispatched."""
    dsn = isolated_settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for pid in ("ev-a", "ev-b", "ev-c"):
                conn.execute("SELECT symphony.add_participant(%s, %s)", (pid, pid))
            conn.execute(
                "INSERT INTO symphony.payment_instruction_registry "
                "  (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, "
                "   rail_type, payload) "
                "SELECT 'ev-' || g, 'k-' || g, gen_random_uuid(), p, g, 'ACH', "
                "       '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}' "
                "  FROM unnest(ARRAY['ev-a', 'ev-b', 'ev-c']) p, generate_series(1, 2000) g")
            conn.execute(
                "INSERT INTO symphony.payment_outbox_pending "
                "  (outbox_id, participant_id, sequence_id) "
                "SELECT outbox_id, participant_id, sequence_id "
                "  FROM symphony.payment_instruction_registry WHERE participant_id LIKE 'ev-%'")
            # One item in twenty is dispatched: a rare type among the participant's events.
            conn.execute(
                "INSERT INTO symphony.payment_outbox_attempts "
                "  (outbox_id, attempt_no, state, rail_transaction_id) "
                "SELECT r.outbox_id, n, CASE n WHEN 1 THEN 'DISPATCHING' ELSE 'DISPATCHED' END"
                "       ::symphony.attempt_state, CASE n WHEN 2 THEN 'rtx-' || n END "
                "  FROM symphony.payment_instruction_registry r, generate_series(1, 2) n "
                " WHERE r.participant_id LIKE 'ev-%' AND r.sequence_id % 20 = 0 "
                " ORDER BY r.outbox_id, n")
            conn.execute(
                "DELETE FROM symphony.payment_outbox_pending "
                " WHERE participant_id LIKE 'ev-%' AND sequence_id % 20 = 0")
        for table in ("payment_events", "payment_instruction_registry"):
            conn.execute(f"ANALYZE symphony.{table}")  # type: ignore[arg-type]
    return dsn


def _explained(dsn: str, statement: str) -> tuple[str, int]:
    notices: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_nested_statements = on",
                        "SET auto_explain.log_level = 'notice'",
                        "SET client_min_messages = 'notice'"):
            conn.execute(setting)  # type: ignore[arg-type]
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        rows = conn.execute(statement).fetchall()  # type: ignore[arg-type]
    return "\n".join(notices), len(rows)


@pytest.mark.auto_explain  # needs the auto_explain module (not in the 16 wheel)
def test_a_page_of_events_is_a_range_of_the_primary_key(seeded_events: str) -> None:
    plans, n = _explained(
        seeded_events, "SELECT * FROM symphony.participant_events('ev-b', 1500, 50, NULL)")
    assert n == 50
    assert "Index Scan using payment_events_pkey" in plans, plans
    assert "Seq Scan on payment_events" not in plans, plans


@pytest.mark.auto_explain  # needs the auto_explain module (not in the 16 wheel)
def test_a_page_of_one_type_is_a_range_of_the_type_index(seeded_events: str) -> None:
    plans, n = _explained(
        seeded_events,
        "SELECT * FROM symphony.participant_events('ev-c', 10, 20, 'payment.dispatched')")
    assert n == 20
    assert "payment_events_type_idx" in plans, plans
    assert "Seq Scan on payment_events" not in plans, plans
