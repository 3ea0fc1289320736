"""Cancellation (migration `cancellation`), against the real server:

* a payment is canceled while no attempt of it can have reached the rail: never claimed, or
  after clean refusals only; the ledger gets a terminal CANCELED row naming who and why, the
  queue loses the item, the participant gets payment.canceled, all in one transaction;
* anything else is NOT_CANCELABLE with the current state and writes nothing: leased, an
  ambiguous attempt or a zombie (the lookup flag), under review, ended;
* canceling again answers the same (idempotent); another participant's payment is unknown;
* the ledger's own rules refuse a CANCELED that breaks I5/I6/I7/I10, whoever writes it;
* each entry point is granted to exactly one role (one allowed, one refused each);
* cancel against claim, concurrently, many rounds: exactly one wins, never a cancel after a
  dispatch started.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from tests.support.api import row_counts
from tests.support.database import make_due, unique
from tests.support.outbox import instruction, register_participant

from symphony.db import (
    Database,
    InvalidRequestError,
    InvariantViolationError,
    NotFoundError,
    PermissionDeniedError,
    Role,
    SymphonyError,
    test_only,
)
from symphony.outbox import (
    AccessStore,
    ClaimedItem,
    Completion,
    OutboxStore,
    Outcome,
    TokenKind,
    TokenScope,
    verify,
)
from symphony.outbox.cancel import CancelOutcome, CancelStore


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


async def _claim(store: OutboxStore, outbox_id: UUID) -> ClaimedItem:
    mine = [c for c in await store.claim(unique("w"), 1000, 60) if c.outbox_id == outbox_id]
    assert len(mine) == 1, "the item is due and claimable"
    return mine[0]


async def _ledger(admin_dsn: str, outbox_id: UUID) -> list[dict[str, Any]]:
    return await test_only.query_no_role(
        admin_dsn, "SELECT attempt_no, state::text AS state, worker_id, error_code, "
                   "       error_detail FROM symphony.payment_outbox_attempts "
                   " WHERE outbox_id = %s ORDER BY attempt_no", (outbox_id,))


async def _events(admin_dsn: str, outbox_id: UUID) -> list[str]:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT event_type FROM symphony.payment_events WHERE outbox_id = %s "
                   " ORDER BY event_seq", (outbox_id,))
    return [r["event_type"] for r in rows]


async def _pending(admin_dsn: str, outbox_id: UUID) -> bool:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT 1 FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (outbox_id,))
    return bool(rows)


# -- what may be canceled --------------------------------------------------------------------------


async def test_a_payment_never_dispatched_is_canceled_in_one_step(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    result = await CancelStore(isolated_db).cancel_as_participant(pid, outbox_id, "wrong amount")
    assert (result.outcome, result.state, result.attempt_no) == (
        CancelOutcome.CANCELED, "CANCELED", 1)
    assert result.canceled_at is not None
    [row] = await _ledger(isolated_admin_dsn, outbox_id)
    assert (row["state"], row["worker_id"], row["error_code"], row["error_detail"]) == (
        "CANCELED", f"participant:{pid}", "CANCELED_BY_PARTICIPANT", "wrong amount")
    assert not await _pending(isolated_admin_dsn, outbox_id)
    assert await _events(isolated_admin_dsn, outbox_id) == ["payment.created", "payment.canceled"]
    payment = await store.payment_for(pid, outbox_id)
    assert payment is not None
    assert (payment.state, payment.terminal_at, payment.next_attempt_at) == (
        "CANCELED", result.canceled_at, None)
    assert [p.outbox_id for p in await store.payments_for(pid, state="CANCELED")] == [outbox_id]
    # Nothing claims it any more.
    assert outbox_id not in {c.outbox_id for c in await store.claim(unique("w"), 1000, 60)}
    assert (await verify(isolated_db)).ok


async def test_a_payment_after_a_clean_refusal_is_canceled(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    first = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_BUSY"))
    result = await CancelStore(isolated_db).cancel_as_participant(pid, outbox_id)
    assert result.outcome is CancelOutcome.CANCELED and result.attempt_no == 3
    assert [r["state"] for r in await _ledger(isolated_admin_dsn, outbox_id)] == [
        "DISPATCHING", "RETRYABLE", "CANCELED"]
    assert (await verify(isolated_db)).ok


async def test_canceling_again_answers_the_same_and_writes_nothing(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    pid = await register_participant(isolated_db)
    outbox_id = (await OutboxStore(isolated_db).enqueue(
        instruction(participant_id=pid))).outbox_id
    cancel = CancelStore(isolated_db)
    first = await cancel.cancel_as_participant(pid, outbox_id)
    before = await row_counts(isolated_admin_dsn)
    again = await cancel.cancel_as_participant(pid, outbox_id, "again")
    by_operator = await cancel.cancel_as_operator(outbox_id, canceled_by="ann", reason="dup")
    assert again.outcome is CancelOutcome.ALREADY_CANCELED and again.canceled
    assert (again.state, again.canceled_at, again.attempt_no) == (
        "CANCELED", first.canceled_at, first.attempt_no)
    assert by_operator.outcome is CancelOutcome.ALREADY_CANCELED
    after = await row_counts(isolated_admin_dsn)
    # Only the operator's attempt is recorded (operator_actions lives in its own schema).
    assert after == before
    assert await _events(isolated_admin_dsn, outbox_id) == ["payment.created", "payment.canceled"]


# -- what may not ------------------------------------------------------------------------------------


async def _refused(db: Database, admin: str, pid: str, outbox_id: UUID, state: str,
                   refusal: str) -> None:
    before = await row_counts(admin)
    result = await CancelStore(db).cancel_as_participant(pid, outbox_id, "please")
    assert (result.outcome, result.state, result.refusal) == (
        CancelOutcome.NOT_CANCELABLE, state, refusal)
    assert not result.canceled and result.canceled_at is None
    assert await row_counts(admin) == before, "a refused cancel writes nothing"


async def test_a_leased_payment_is_not_cancelable(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    claimed = await _claim(store, outbox_id)
    await _refused(isolated_db, isolated_admin_dsn, pid, outbox_id, "DISPATCHING", "DISPATCHING")
    # The dispatch goes on and completes under its lease.
    done = await store.complete(Completion(outbox_id, claimed.lease_token, Outcome.DISPATCHED,
                                           rail_transaction_id="rtx-1"))
    assert done.state == "DISPATCHED"


async def test_an_ambiguous_attempt_makes_it_not_cancelable_for_good(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    first = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    await _refused(isolated_db, isolated_admin_dsn, pid, outbox_id, "RETRYABLE",
                   "MAY_HAVE_REACHED_RAIL")
    # A later clean refusal proves nothing about the earlier call: still not cancelable.
    await make_due(isolated_admin_dsn, outbox_id)
    second = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, second.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_BUSY"))
    await _refused(isolated_db, isolated_admin_dsn, pid, outbox_id, "RETRYABLE",
                   "MAY_HAVE_REACHED_RAIL")


async def test_a_zombie_is_not_cancelable(isolated_db: Database, isolated_admin_dsn: str) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    await _claim(store, outbox_id)
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony.payment_outbox_pending SET lease_expires_at = now() - interval '1 s', "
        "       claimed_at = now() - interval '1 hour' WHERE outbox_id = %s", (outbox_id,))
    assert outbox_id in {r.outbox_id for r in await store.repair_expired_leases(100)}
    await _refused(isolated_db, isolated_admin_dsn, pid, outbox_id, "PENDING",
                   "MAY_HAVE_REACHED_RAIL")


async def test_a_payment_under_review_is_not_cancelable(
    isolated_db: Database, policy: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    first = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    await make_due(policy, outbox_id)
    second = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, second.lease_token, Outcome.FAILED,
                                    error_code="DECLINED"))
    await _refused(isolated_db, policy, pid, outbox_id, "RETRYABLE", "UNDER_REVIEW")


@pytest.mark.parametrize("outcome", [Outcome.DISPATCHED, Outcome.FAILED])
async def test_an_ended_payment_is_not_cancelable(
    isolated_db: Database, isolated_admin_dsn: str, outcome: Outcome
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id
    claimed = await _claim(store, outbox_id)
    await store.complete(Completion(
        outbox_id, claimed.lease_token, outcome, error_code="DECLINED",
        rail_transaction_id="rtx-2" if outcome is Outcome.DISPATCHED else None))
    await _refused(isolated_db, isolated_admin_dsn, pid, outbox_id, outcome.value, "TERMINAL")


async def test_another_participants_payment_is_unknown(isolated_db: Database) -> None:
    a, b = await register_participant(isolated_db), await register_participant(isolated_db)
    outbox_id = (await OutboxStore(isolated_db).enqueue(instruction(participant_id=a))).outbox_id
    for pid, oid in ((b, outbox_id), (a, uuid4())):
        with pytest.raises(NotFoundError) as info:
            await CancelStore(isolated_db).cancel_as_participant(pid, oid)
        assert info.value.code == "PAYMENT_NOT_FOUND"


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501, "bad\x07bell", "rtl\u202eoverride"])
async def test_a_malformed_reason_is_refused(isolated_db: Database, reason: str) -> None:
    pid = await register_participant(isolated_db)
    outbox_id = (await OutboxStore(isolated_db).enqueue(
        instruction(participant_id=pid))).outbox_id
    with pytest.raises(InvalidRequestError) as info:
        await CancelStore(isolated_db).cancel_as_participant(pid, outbox_id, reason)
    assert info.value.code == "INVALID_CANCEL_REQUEST"
    assert (await OutboxStore(isolated_db).payment_for(pid, outbox_id)).state == "PENDING"  # type: ignore[union-attr]


# -- operators ----------------------------------------------------------------------------------------


async def test_an_operator_cancels_any_payment_and_is_recorded(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    pid = await register_participant(isolated_db)
    outbox_id = (await OutboxStore(isolated_db).enqueue(
        instruction(participant_id=pid))).outbox_id
    await AccessStore(isolated_db).revoke_participant(pid)  # its accepted payments go on ...
    result = await CancelStore(isolated_db).cancel_as_operator(
        outbox_id, canceled_by="ann.oncall", reason="customer asked by phone")
    assert result.outcome is CancelOutcome.CANCELED and result.participant_id == pid
    [row] = await _ledger(isolated_admin_dsn, outbox_id)
    assert (row["worker_id"], row["error_code"]) == ("operator:ann.oncall", "CANCELED_BY_OPERATOR")
    [action] = await test_only.query_no_role(
        isolated_admin_dsn, "SELECT action, participant_id, actor_token_id, actor_label, "
                            "       reason, outcome FROM symphony_ops.operator_actions "
                            " WHERE outbox_id = %s", (outbox_id,))
    assert (action["action"], action["participant_id"], action["actor_token_id"],
            action["actor_label"], action["reason"]) == (
        "CANCEL_PAYMENT", pid, None, "ann.oncall", "customer asked by phone")
    assert action["outcome"]["result"] == "CANCELED"


async def test_an_operator_needs_a_name_and_a_reason(isolated_db: Database) -> None:
    outbox_id = (await OutboxStore(isolated_db).enqueue(instruction())).outbox_id
    cancel = CancelStore(isolated_db)
    with pytest.raises(InvalidRequestError) as info:
        await cancel.cancel_as_operator(outbox_id, canceled_by="bad name", reason="r")
    assert info.value.code == "INVALID_CANCEL_REQUEST"
    with pytest.raises(InvalidRequestError) as info:
        await cancel.cancel_as_operator(outbox_id, canceled_by="ann", reason=" ")
    assert info.value.code == "INVALID_ACTION_REASON"


async def test_an_operator_token_cancels_with_operator_scope_only(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    access = AccessStore(isolated_db)
    outbox_id = (await OutboxStore(isolated_db).enqueue(instruction())).outbox_id
    cancel = CancelStore(isolated_db)
    viewer = await access.authenticate((await access.issue_token(
        TokenKind.OPERATOR, label="viewer", scope=TokenScope.VIEWER)).token)
    actor = await access.authenticate((await access.issue_token(
        TokenKind.OPERATOR, label="ann's token", scope=TokenScope.OPERATOR)).token)
    assert viewer is not None and actor is not None
    with pytest.raises(PermissionDeniedError) as info:
        await cancel.cancel_with_token(viewer, outbox_id, "not allowed")
    assert info.value.code == "INSUFFICIENT_SCOPE"
    result = await cancel.cancel_with_token(actor, outbox_id, "duplicate payment")
    assert result.outcome is CancelOutcome.CANCELED and result.action_id is not None
    [row] = await _ledger(isolated_admin_dsn, outbox_id)
    assert row["worker_id"] == f"operator:token:{actor.token_id}"
    [action] = await test_only.query_no_role(
        isolated_admin_dsn, "SELECT actor_token_id, actor_label FROM symphony_ops.operator_actions"
                            " WHERE action_id = %s", (result.action_id,))
    assert (action["actor_token_id"], action["actor_label"]) == (actor.token_id, "ann's token")


# -- the ledger's own rules, whoever writes -------------------------------------------------------


async def _as_owner(admin: str, statement: str, *params: object) -> SymphonyError:
    with pytest.raises(SymphonyError) as info:
        await test_only.query_as_owner(admin, statement, params or None)
    return info.value


_APPEND = ("INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state, "
           " worker_id) VALUES (%s, %s, %s::symphony.attempt_state, 'intruder')")


async def test_canceled_after_a_dispatching_row_is_an_illegal_transition(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = (await store.enqueue(instruction())).outbox_id
    await _claim(store, outbox_id)
    err = await _as_owner(isolated_admin_dsn, _APPEND, outbox_id, 2, "CANCELED")
    assert isinstance(err, InvariantViolationError)
    assert err.sqlstate in ("SY300",)


async def test_canceled_after_an_ambiguous_retry_is_refused_even_to_the_owner(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = (await store.enqueue(instruction())).outbox_id
    first = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    err = await _as_owner(
        isolated_admin_dsn,
        "WITH gone AS (DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = %s) "
        + _APPEND, outbox_id, outbox_id, 3, "CANCELED")
    assert err.sqlstate == "SY300"


async def test_nothing_follows_canceled_and_the_queue_must_let_go(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    pid = await register_participant(isolated_db)
    outbox_id = (await OutboxStore(isolated_db).enqueue(
        instruction(participant_id=pid))).outbox_id
    await CancelStore(isolated_db).cancel_as_participant(pid, outbox_id)
    for state in ("DISPATCHING", "CANCELED", "FAILED"):
        err = await _as_owner(isolated_admin_dsn, _APPEND, outbox_id, 2, state)
        assert err.sqlstate == "SY300", state
    # I7: a CANCELED row while the item stays queued fails at commit.
    other = (await OutboxStore(isolated_db).enqueue(instruction())).outbox_id
    err = await _as_owner(isolated_admin_dsn, _APPEND, other, 1, "CANCELED")
    assert err.sqlstate == "SY302"


# -- privileges: each entry point, one role allowed and one refused ---------------------------------


_CALLS = {
    "cancel_payment": "SELECT * FROM symphony.cancel_payment('p1', %s, NULL)",
    "cancel_payment_by_operator":
        "SELECT * FROM symphony.cancel_payment_by_operator(%s, 'ann', 'a reason')",
    "ops_cancel_payment":
        "SELECT * FROM symphony.ops_cancel_payment(gen_random_uuid(), '\\x00', %s, 'r')",
    "cancel_outbox_item":
        "SELECT * FROM symphony.cancel_outbox_item(%s, NULL, 'x', 'X', 'r')",
}


@pytest.mark.parametrize(("name", "role", "allowed"), [
    ("cancel_payment", Role.INGEST, True),
    ("cancel_payment", Role.READONLY, False),
    ("cancel_payment", Role.CONTROL, False),
    ("cancel_payment_by_operator", Role.CONTROL, True),
    ("cancel_payment_by_operator", Role.INGEST, False),
    ("ops_cancel_payment", Role.OPERATOR, True),
    ("ops_cancel_payment", Role.INGEST, False),
    ("cancel_outbox_item", Role.CONTROL, False),
    ("cancel_outbox_item", Role.OPERATOR, False),
])
async def test_each_cancel_function_is_granted_to_one_role(
    db: Database, name: str, role: Role, allowed: bool
) -> None:
    statement = _CALLS[name]
    unknown = uuid4()
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(db, role, statement, (unknown,))
    if allowed:
        # Past the privilege check: the function ran and found no such payment (or no such
        # token, for the operator API's).
        assert info.value.code in ("PAYMENT_NOT_FOUND", "OPERATOR_TOKEN_INVALID"), info.value
    else:
        assert isinstance(info.value, PermissionDeniedError)
        assert info.value.sqlstate == "42501"


# -- the race: cancel against claim ----------------------------------------------------------------


async def test_cancel_and_claim_race_exactly_one_wins(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store, cancel = OutboxStore(isolated_db), CancelStore(isolated_db)
    pid = await register_participant(isolated_db)
    wins = {"cancel": 0, "claim": 0}
    for n in range(40):
        outbox_id = (await store.enqueue(instruction(participant_id=pid))).outbox_id

        async def claim(oid: UUID, worker: str) -> list[ClaimedItem]:
            return [c for c in await store.claim(worker, 10, 60) if c.outbox_id == oid]

        async def cancel_it(oid: UUID) -> Any:
            return await cancel.cancel_as_participant(pid, oid, "race")

        # Alternate who starts first, so both orders are exercised.
        if n % 2:
            claimed, result = await asyncio.gather(claim(outbox_id, f"racer-{n}"),
                                                   cancel_it(outbox_id))
        else:
            result, claimed = await asyncio.gather(cancel_it(outbox_id),
                                                   claim(outbox_id, f"racer-{n}"))
        states = [r["state"] for r in await _ledger(isolated_admin_dsn, outbox_id)]
        if result.outcome is CancelOutcome.CANCELED:
            assert claimed == [] and states == ["CANCELED"], (n, states)
            wins["cancel"] += 1
        else:
            assert len(claimed) == 1 and result.state == "DISPATCHING", (n, result)
            assert states == ["DISPATCHING"], (n, states)
            wins["claim"] += 1
            await store.complete(Completion(outbox_id, claimed[0].lease_token,
                                            Outcome.DISPATCHED, rail_transaction_id=f"r-{n}"))
    assert wins["cancel"] + wins["claim"] == 40
    print("race wins", wins)
    # Never a CANCELED after a dispatch started: no race item has both rows.
    bad = await test_only.query_no_role(
        isolated_admin_dsn,
        "SELECT a.outbox_id FROM symphony.payment_outbox_attempts a "
        "  JOIN symphony.payment_outbox_attempts d ON d.outbox_id = a.outbox_id "
        "   AND d.state = 'DISPATCHING' "
        " WHERE a.state = 'CANCELED' AND a.participant_id = %s", (pid,))
    assert bad == []
    assert (await verify(isolated_db)).ok
