"""Operators in the database: scoped tokens, the accountable actions, the fleet's heartbeats,
one participant's view and the queue browse (the operators migration, symphony.outbox.operators).

Every new function is executed by the role it is granted to and refused (42501) for another;
each action records who acted (the token's id and label) and why, append-only, or writes
nothing at all.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from tests.support.database import unique
from tests.support.ops import database_now, ended_item, put_under_review
from tests.support.outbox import instruction, register_participant

from symphony.db import (
    ConflictError,
    Database,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    Role,
    SymphonyError,
    test_only,
)
from symphony.outbox import AccessStore, OutboxStore, TokenKind, TokenScope
from symphony.outbox.access import Caller
from symphony.outbox.model import BucketRange
from symphony.outbox.operators import Heartbeat, OperatorStore, decode_cursor, encode_cursor

HASH = "sha256('x'::bytea)"


async def caller(db: Database, scope: TokenScope, label: str = "ops alice") -> Caller:
    access = AccessStore(db)
    issued = await access.issue_token(TokenKind.OPERATOR, label=label, scope=scope)
    found = await access.authenticate(issued.token)
    assert found is not None
    return found


async def action_rows(admin_dsn: str, **where: Any) -> list[dict[str, Any]]:
    column, value = next(iter(where.items()))
    assert column in ("outbox_id", "participant_id", "target")
    return await test_only.query_no_role(
        admin_dsn,
        f"SELECT * FROM symphony_ops.operator_actions WHERE {column} = %s ORDER BY action_id",
        (str(value),))


# -- scopes ----------------------------------------------------------------------------------


async def test_an_operator_token_is_a_viewer_unless_issued_operator(db: Database) -> None:
    access = AccessStore(db)
    plain = await access.issue_token(TokenKind.OPERATOR, label="plain")
    acting = await access.issue_token(TokenKind.OPERATOR, label="acting",
                                      scope=TokenScope.OPERATOR)
    participant = await access.issue_token(TokenKind.PARTICIPANT,
                                           participant_id=await register_participant(db))
    assert (plain.scope, acting.scope, participant.scope) == (
        TokenScope.VIEWER, TokenScope.OPERATOR, None)
    seen = await access.authenticate(acting.token)
    assert seen is not None and seen.scope == TokenScope.OPERATOR and seen.may_act
    assert seen.label == "acting"
    viewer = await access.authenticate(plain.token)
    assert viewer is not None and viewer.scope == TokenScope.VIEWER and not viewer.may_act


async def test_the_old_issue_function_makes_viewers(db: Database) -> None:
    rows = await test_only.execute_as_role(
        db, Role.CONTROL,
        "SELECT token_id FROM symphony.issue_api_token(gen_random_uuid(), 'OPERATOR', NULL, "
        "'old', '\\x00112233445566778899aabbccddeeff'::bytea, " + HASH + ")")
    scope = await test_only.query_no_role(
        db.endpoint.admin_dsn, "SELECT scope FROM symphony.api_tokens WHERE token_id = %s",
        (rows[0]["token_id"],))
    assert scope == [{"scope": "VIEWER"}]


@pytest.mark.parametrize("scope", ["ADMIN", None])
async def test_an_operator_token_needs_a_known_scope(db: Database, scope: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await test_only.execute_as_role(
            db, Role.CONTROL,
            "SELECT * FROM symphony.issue_scoped_api_token(gen_random_uuid(), 'OPERATOR', NULL, "
            "'x', '\\x00112233445566778899aabbccddeeff'::bytea, " + HASH + ", %s)", (scope,))
    assert info.value.code == "INVALID_TOKEN_REQUEST"


async def test_a_participant_token_has_no_scope(db: Database) -> None:
    pid = await register_participant(db)
    with pytest.raises(InvalidRequestError):
        await test_only.execute_as_role(
            db, Role.CONTROL,
            "SELECT * FROM symphony.issue_scoped_api_token(gen_random_uuid(), 'PARTICIPANT', "
            "%s, 'x', '\\x00112233445566778899aabbccddeeff'::bytea, " + HASH + ", 'OPERATOR')",
            (pid,))


async def test_a_scope_is_fixed_even_for_the_owner(db: Database) -> None:
    issued = await AccessStore(db).issue_token(TokenKind.OPERATOR, label="fixed")
    with pytest.raises(SymphonyError) as info:
        await test_only.query_as_owner(
            db.endpoint.admin_dsn,
            "UPDATE symphony.api_tokens SET scope = 'OPERATOR' WHERE token_id = %s",
            (issued.token_id,))
    assert info.value.sqlstate == "SY038"


# -- privileges: each new function, one role allowed and one refused ------------------------

PRIVILEGES: dict[str, tuple[str, Role, Role]] = {
    # name: (statement, allowed, refused)
    "issue_scoped_api_token": (
        "SELECT * FROM symphony.issue_scoped_api_token(gen_random_uuid(), 'OPERATOR', NULL, "
        "'p', '\\x00112233445566778899aabbccddeeff'::bytea, " + HASH + ", 'VIEWER')",
        Role.CONTROL, Role.READONLY),
    "authenticate_api_token": (
        "SELECT * FROM symphony.authenticate_api_token(gen_random_uuid(), " + HASH + ")",
        Role.READONLY, Role.OPERATOR),
    "ops_api_tokens": ("SELECT * FROM symphony.ops_api_tokens(5)", Role.READONLY, Role.INGEST),
    "ops_item_actions": ("SELECT * FROM symphony.ops_item_actions(gen_random_uuid())",
                         Role.READONLY, Role.EXECUTOR),
    "ops_participant_summary": ("SELECT * FROM symphony.ops_participant_summary('nobody')",
                                Role.CONTROL, Role.AUDITOR),
    "record_worker_heartbeat": (
        "SELECT symphony.record_worker_heartbeat('priv-' || gen_random_uuid(), 0, 255, 'v', "
        "now(), NULL, 0, 30)", Role.EXECUTOR, Role.OPERATOR),
    "end_worker_heartbeat": ("SELECT symphony.end_worker_heartbeat('nobody')",
                             Role.EXECUTOR, Role.READONLY),
}

# The actions: executable by the operator role only. With a token that is not a live operator
# token they refuse (SY060) after the privilege check: reaching SY060 proves EXECUTE.
ACTIONS: dict[str, str] = {
    "ops_resolve_review": (
        "SELECT * FROM symphony.ops_resolve_review(gen_random_uuid(), " + HASH
        + ", gen_random_uuid(), 'FAILED', 'why', NULL)"),
    "ops_revoke_participant": (
        "SELECT * FROM symphony.ops_revoke_participant(gen_random_uuid(), " + HASH
        + ", 'nobody', 'why')"),
    "ops_revoke_token": (
        "SELECT * FROM symphony.ops_revoke_token(gen_random_uuid(), " + HASH
        + ", gen_random_uuid(), 'why')"),
}

INTERNAL = ("operator_actor(gen_random_uuid(), " + HASH + ")", "check_operator_reason('x')")


@pytest.mark.parametrize("name", PRIVILEGES)
async def test_the_granted_role_runs_the_function(db: Database, name: str) -> None:
    statement, allowed, _ = PRIVILEGES[name]
    await test_only.execute_as_role(db, allowed, statement)


@pytest.mark.parametrize("name", PRIVILEGES)
async def test_another_role_is_refused_the_function(db: Database, name: str) -> None:
    statement, _, refused = PRIVILEGES[name]
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(db, refused, statement)
    assert info.value.sqlstate == "42501"


@pytest.mark.parametrize("name", ACTIONS)
async def test_the_operator_role_reaches_the_action(db: Database, name: str) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(db, Role.OPERATOR, ACTIONS[name])
    assert info.value.sqlstate == "SY060"
    assert info.value.code == "OPERATOR_TOKEN_INVALID"


@pytest.mark.parametrize("role", [Role.CONTROL, Role.READONLY, Role.INGEST, Role.EXECUTOR,
                                  Role.AUDITOR])
@pytest.mark.parametrize("name", ACTIONS)
async def test_no_other_role_may_run_an_action(db: Database, name: str, role: Role) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(db, role, ACTIONS[name])
    assert info.value.sqlstate == "42501"


@pytest.mark.parametrize("statement", INTERNAL)
@pytest.mark.parametrize("role", list(Role))
async def test_the_internal_helpers_are_nobodys(db: Database, statement: str, role: Role) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(db, role, f"SELECT * FROM symphony.{statement}")
    assert info.value.sqlstate == "42501"


@pytest.mark.parametrize("table", ["operator_actions", "worker_heartbeats"])
async def test_readers_read_the_ops_tables(db: Database, table: str) -> None:
    await test_only.execute_as_role(db, Role.READONLY,
                                    f"SELECT count(*) AS n FROM symphony_ops.{table}")


@pytest.mark.parametrize("table", ["operator_actions", "worker_heartbeats"])
@pytest.mark.parametrize("role", list(Role))
async def test_no_role_writes_the_ops_tables(db: Database, table: str, role: Role) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        await test_only.execute_as_role(db, role, f"DELETE FROM symphony_ops.{table}")
    assert info.value.sqlstate == "42501"


async def test_the_operator_role_reads_nothing(db: Database) -> None:
    for statement in ("SELECT count(*) FROM symphony.payment_outbox_attempts",
                      "SELECT count(*) FROM symphony_ops.operator_actions",
                      "SELECT count(*) FROM symphony.participants"):
        with pytest.raises(PermissionDeniedError):
            await test_only.execute_as_role(db, Role.OPERATOR, statement)


async def test_the_action_record_is_append_only_even_for_the_owner(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    actor = await caller(isolated_db, TokenScope.OPERATOR)
    pid = await register_participant(isolated_db)
    await OperatorStore(isolated_db).revoke_participant(actor, pid, "fraud report 17")
    for statement in ("UPDATE symphony_ops.operator_actions SET reason = 'x'",
                      "DELETE FROM symphony_ops.operator_actions",
                      "TRUNCATE symphony_ops.operator_actions"):
        with pytest.raises(SymphonyError) as info:
            await test_only.query_as_owner(isolated_admin_dsn, statement)
        assert info.value.sqlstate == "P0001"


# -- resolve ---------------------------------------------------------------------------------


async def test_an_operator_token_resolves_a_review_item_and_is_named(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await put_under_review(store, isolated_admin_dsn)
    actor = await caller(isolated_db, TokenScope.OPERATOR, label="alice on call")
    ops = OperatorStore(isolated_db)
    done = await ops.resolve_review(actor, outbox_id, "DISPATCHED",
                                    "rail confirmed by phone, ticket 4411", "RTX-991")
    assert (done["state"], done["decision"]) == ("DISPATCHED", "DISPATCHED")
    ledger = await store.ledger(outbox_id)
    assert [r["state"] for r in ledger] == ["DISPATCHING", "DISPATCHED"]
    assert ledger[-1]["rail_transaction_id"] == "RTX-991"
    assert ledger[-1]["worker_id"] == f"review:token:{actor.token_id}"
    [row] = await action_rows(isolated_admin_dsn, outbox_id=outbox_id)
    assert (row["action"], row["actor_token_id"], row["actor_label"], row["reason"]) == (
        "RESOLVE_REVIEW", actor.token_id, "alice on call", "rail confirmed by phone, ticket 4411")
    assert row["outcome"]["rail_transaction_id"] == "RTX-991"
    history = await ops.item_actions(outbox_id)
    assert [(h["action"], h["actor_label"]) for h in history] == [
        ("RESOLVE_REVIEW", "alice on call")]


async def test_a_viewer_token_cannot_resolve_and_nothing_is_written(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await put_under_review(store, isolated_admin_dsn)
    viewer = await caller(isolated_db, TokenScope.VIEWER)
    with pytest.raises(PermissionDeniedError) as info:
        await OperatorStore(isolated_db).resolve_review(viewer, outbox_id, "FAILED", "no", None)
    assert info.value.code == "INSUFFICIENT_SCOPE"
    assert await store.ledger(outbox_id) == []
    assert await action_rows(isolated_admin_dsn, outbox_id=outbox_id) == []


async def test_a_token_id_without_its_secret_cannot_act(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await put_under_review(store, isolated_admin_dsn)
    actor = await caller(isolated_db, TokenScope.OPERATOR)
    forged = Caller(actor.token_id, actor.kind, None, scope=actor.scope, credential=b"\0" * 32)
    with pytest.raises(PermissionDeniedError) as info:
        await OperatorStore(isolated_db).resolve_review(forged, outbox_id, "FAILED", "x", None)
    assert info.value.code == "OPERATOR_TOKEN_INVALID"
    assert await store.ledger(outbox_id) == []


async def test_a_revoked_operator_token_cannot_act(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await put_under_review(store, isolated_admin_dsn)
    actor = await caller(isolated_db, TokenScope.OPERATOR)
    await AccessStore(isolated_db).revoke_token(actor.token_id)
    with pytest.raises(PermissionDeniedError) as info:
        await OperatorStore(isolated_db).resolve_review(actor, outbox_id, "FAILED", "x", None)
    assert info.value.code == "OPERATOR_TOKEN_INVALID"


async def test_resolving_an_item_that_moved_on_is_refused_and_writes_nothing(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await put_under_review(store, isolated_admin_dsn)
    ops = OperatorStore(isolated_db)
    first = await caller(isolated_db, TokenScope.OPERATOR, label="first")
    second = await caller(isolated_db, TokenScope.OPERATOR, label="second")
    await ops.resolve_review(first, outbox_id, "FAILED", "the rail says it never arrived", None)
    with pytest.raises(InvalidRequestError) as info:
        await ops.resolve_review(second, outbox_id, "DISPATCHED", "late", "RTX-1")
    assert info.value.code == "NOT_UNDER_REVIEW"
    assert [r["actor_label"] for r in await action_rows(isolated_admin_dsn,
                                                        outbox_id=outbox_id)] == ["first"]


@pytest.mark.parametrize(("decision", "reason", "rail_tx", "code"), [
    ("RETRY", "why", None, "INVALID_REVIEW_DECISION"),
    ("DISPATCHED", "why", None, "INVALID_REVIEW_DECISION"),
    ("FAILED", "", None, "INVALID_ACTION_REASON"),
    ("FAILED", "line\nbreak", None, "INVALID_ACTION_REASON"),
    ("FAILED", "x" * 501, None, "INVALID_ACTION_REASON"),
])
async def test_a_bad_resolve_is_refused_and_writes_nothing(
    isolated_db: Database, isolated_admin_dsn: str, decision: str, reason: str,
    rail_tx: str | None, code: str,
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await put_under_review(store, isolated_admin_dsn)
    actor = await caller(isolated_db, TokenScope.OPERATOR)
    with pytest.raises(InvalidRequestError) as info:
        await OperatorStore(isolated_db).resolve_review(actor, outbox_id, decision, reason,
                                                        rail_tx)
    assert info.value.code == code
    assert await store.ledger(outbox_id) == []
    assert await action_rows(isolated_admin_dsn, outbox_id=outbox_id) == []


async def test_a_command_line_decision_shows_in_the_item_history(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    from symphony.outbox import ReviewDecision

    store = OutboxStore(isolated_db)
    outbox_id = await put_under_review(store, isolated_admin_dsn)
    await store.resolve_review(outbox_id, ReviewDecision.FAILED, decided_by="bob.cli",
                               reason="rail statement shows no debit")
    [entry] = await OperatorStore(isolated_db).item_actions(outbox_id)
    assert (entry["action"], entry["actor_label"], entry["actor_token_id"]) == (
        "RESOLVE_REVIEW", "bob.cli", None)
    assert entry["recorded_by"] == "symphony_control_svc"


# -- revoke ----------------------------------------------------------------------------------


async def test_an_operator_revokes_a_participant_and_its_tokens_accountably(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    access = AccessStore(isolated_db)
    pid = await register_participant(isolated_db)
    member = await access.issue_token(TokenKind.PARTICIPANT, participant_id=pid)
    actor = await caller(isolated_db, TokenScope.OPERATOR, label="bob")
    ops = OperatorStore(isolated_db)
    done = await ops.revoke_participant(actor, pid, "contract ended")
    assert done["status"] == "REVOKED"
    assert await access.authenticate(member.token) is None
    [row] = await action_rows(isolated_admin_dsn, participant_id=pid)
    assert (row["action"], row["actor_label"], row["reason"]) == (
        "REVOKE_PARTICIPANT", "bob", "contract ended")
    with pytest.raises(ConflictError) as info:
        await ops.revoke_participant(actor, pid, "again")
    assert info.value.code == "ALREADY_REVOKED"
    assert len(await action_rows(isolated_admin_dsn, participant_id=pid)) == 1
    with pytest.raises(NotFoundError):
        await ops.revoke_participant(actor, unique("nobody"), "x")


async def test_an_operator_revokes_a_token_once(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    access = AccessStore(isolated_db)
    target = await access.issue_token(TokenKind.OPERATOR, label="leaked laptop")
    actor = await caller(isolated_db, TokenScope.OPERATOR)
    ops = OperatorStore(isolated_db)
    await ops.revoke_token(actor, target.token_id, "laptop stolen")
    assert await access.authenticate(target.token) is None
    [row] = await action_rows(isolated_admin_dsn, target=target.token_id)
    assert row["outcome"]["label"] == "leaked laptop"
    with pytest.raises(ConflictError):
        await ops.revoke_token(actor, target.token_id, "again")
    viewer = await caller(isolated_db, TokenScope.VIEWER)
    other = await access.issue_token(TokenKind.OPERATOR)
    with pytest.raises(PermissionDeniedError):
        await ops.revoke_token(viewer, other.token_id, "viewer tries")
    assert await access.authenticate(other.token) is not None


# -- the fleet -------------------------------------------------------------------------------


def beat(worker_id: str, first: int, last: int, **extra: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "worker_id": worker_id, "buckets": BucketRange(first, last), "version": "1.2.3",
        "started_at": extra.pop("started_at", None), "last_cycle_at": None, "in_flight": 3,
        "stale_after_seconds": 30}
    fields.update(extra)
    return Heartbeat(**fields)


async def _clear_fleet(admin_dsn: str) -> None:
    await test_only.query_no_role(admin_dsn, "DELETE FROM symphony_ops.worker_heartbeats")


async def test_a_fleet_that_leaves_a_gap_shows_the_uncovered_buckets(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    await _clear_fleet(isolated_admin_dsn)
    ops = OperatorStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    assert (await ops.fleet()).uncovered == [BucketRange(0, 255)]
    for worker_id, first, last in (("w-a", 0, 63), ("w-b", 64, 127), ("w-d", 192, 255)):
        await ops.heartbeat(beat(worker_id, first, last, started_at=now))
    fleet = await ops.fleet()
    assert {w.worker_id for w in fleet.live} == {"w-a", "w-b", "w-d"}
    assert fleet.uncovered == [BucketRange(128, 191)]
    assert fleet.as_dict()["alert"] is True and fleet.uncovered_count == 64

    # The worker covering 128-191 starts: no gap. Then w-b goes silent: its range opens.
    await ops.heartbeat(beat("w-c", 128, 191, started_at=now))
    assert (await ops.fleet()).uncovered == []
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony_ops.worker_heartbeats SET heartbeat_at = now() - interval '31 seconds'"
        " WHERE worker_id = 'w-b'")
    fleet = await ops.fleet()
    assert [w.worker_id for w in fleet.stale] == ["w-b"]
    assert fleet.uncovered == [BucketRange(64, 127)]
    # A clean stop leaves the fleet at once.
    assert await ops.end_heartbeat("w-c")
    assert (await ops.fleet()).uncovered == [BucketRange(64, 191)]


async def test_a_heartbeat_updates_its_row_and_records_what_the_worker_says(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    await _clear_fleet(isolated_admin_dsn)
    ops = OperatorStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    await ops.heartbeat(beat("w-1", 0, 255, started_at=now))
    await ops.heartbeat(beat("w-1", 0, 255, started_at=now, in_flight=7, last_cycle_at=now))
    [worker] = (await ops.fleet()).workers
    assert (worker.in_flight, worker.last_cycle_at, worker.version) == (7, now, "1.2.3")
    rows = await test_only.query_no_role(
        isolated_admin_dsn, "SELECT login FROM symphony_ops.worker_heartbeats")
    assert rows == [{"login": "symphony_executor_svc"}]


@pytest.mark.parametrize(("fields", "code"), [
    ({"stale_after_seconds": 0}, "INVALID_HEARTBEAT"),
    ({"in_flight": -1}, "INVALID_HEARTBEAT"),
    ({"worker_id": ""}, "INVALID_WORKER_ID"),
])
async def test_a_bad_heartbeat_is_refused(
    isolated_db: Database, isolated_admin_dsn: str, fields: dict[str, Any], code: str
) -> None:
    now = await database_now(isolated_admin_dsn)
    with pytest.raises(InvalidRequestError) as info:
        worker_id = fields.pop("worker_id", "w-bad")
        await OperatorStore(isolated_db).heartbeat(beat(worker_id, 0, 1, started_at=now,
                                                        **fields))
    assert info.value.code == code


# -- one participant -------------------------------------------------------------------------


async def test_a_participant_summary_counts_its_own_items_only(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    other = await register_participant(isolated_db)
    now = await database_now(isolated_admin_dsn)
    for _ in range(3):
        await store.enqueue(instruction(participant_id=pid))
    await store.enqueue(instruction(participant_id=other))
    await put_under_review(store, isolated_admin_dsn, participant_id=pid)
    for state, ago in (("DISPATCHED", 5), ("DISPATCHED", 10), ("FAILED", 20),
                       ("FAILED", 120)):
        await ended_item(store, isolated_admin_dsn, state, now - timedelta(minutes=ago),
                         submitted=instruction(participant_id=pid))
    summary = await OperatorStore(isolated_db).participant_summary(pid)
    assert summary is not None
    assert (summary["due"], summary["under_review"], summary["pending_total"]) == (3, 1, 4)
    assert (summary["dispatched_last_hour"], summary["failed_last_hour"]) == (2, 1)
    assert (summary["dispatched_last_day"], summary["failed_last_day"]) == (2, 2)
    assert summary["failure_rate_last_hour"] == pytest.approx(1 / 3)
    assert summary["oldest_pending_age_seconds"] >= 0
    assert await OperatorStore(isolated_db).participant_summary(unique("nobody")) is None


# -- the browse ------------------------------------------------------------------------------


async def test_the_browse_pages_by_cursor_and_filters(
    isolated_db: Database, isolated_admin_dsn: str
) -> None:
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    now = await database_now(isolated_admin_dsn)
    made = [(await store.enqueue(instruction(participant_id=pid))).outbox_id for _ in range(5)]
    failed = await ended_item(store, isolated_admin_dsn, "FAILED", now,
                              submitted=instruction(participant_id=pid, rail_type="RTP"))
    review = await put_under_review(store, isolated_admin_dsn, participant_id=pid)
    ops = OperatorStore(isolated_db)

    seen: list[UUID] = []
    after = None
    while True:
        page = await ops.browse(participant=pid, limit=2, after=after)
        seen += [i["outbox_id"] for i in page.items]
        if not page.has_more:
            break
        after = page.next_after
    assert len(seen) == 7 and len(set(seen)) == 7
    assert set(made) | {failed, review} == set(seen)

    failed_page = await ops.browse(participant=pid, state="FAILED")
    assert [i["outbox_id"] for i in failed_page.items] == [failed]
    assert [i["outbox_id"] for i in (await ops.browse(participant=pid, rail="RTP")).items] == [
        failed]
    reviews = await ops.browse(state="REVIEW", participant=pid)
    assert [(i["outbox_id"], i["state"]) for i in reviews.items] == [(review, "REVIEW")]
    pending = await ops.browse(participant=pid, state="PENDING", limit=200)
    assert {i["outbox_id"] for i in pending.items} == set(made)


async def test_a_filtered_browse_looks_at_a_bounded_window(
    isolated_db: Database, isolated_admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import symphony.outbox.operators as operators

    monkeypatch.setattr(operators, "BROWSE_WINDOW", 3)
    store = OutboxStore(isolated_db)
    pid = await register_participant(isolated_db)
    now = await database_now(isolated_admin_dsn)
    failed = await ended_item(store, isolated_admin_dsn, "FAILED", now,
                              submitted=instruction(participant_id=pid))
    for _ in range(5):
        await store.enqueue(instruction(participant_id=pid))
    ops = OperatorStore(isolated_db)
    page = await ops.browse(participant=pid, state="FAILED")
    assert page.items == [] and page.has_more and page.scanned == 3
    page = await ops.browse(participant=pid, state="FAILED", after=page.next_after)
    assert [i["outbox_id"] for i in page.items] == [failed]


@pytest.mark.parametrize("cursor", ["nope", "!!!", encode_cursor.__name__, "a" * 300])
def test_a_foreign_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_cursor(cursor)
    assert info.value.code == "INVALID_CURSOR"


async def test_a_cursor_round_trips(isolated_admin_dsn: str) -> None:
    now = await database_now(isolated_admin_dsn)
    ident = uuid.uuid4()
    assert decode_cursor(encode_cursor(now, ident)) == (now, ident)

