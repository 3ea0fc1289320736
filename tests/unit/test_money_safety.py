"""Money-safety rules of the database: what review found and each fix proves.

* a FAILED is never recorded once an attempt of the item may have executed; such an item is
  held open, looked up after a settle time, and ends in review, never in silence;
* an operator resolves review items with the rail's confirmed outcome, in the ledger, named;
* trigger functions run as the owner (deferred triggers fire as the COMMIT-time role before
  PostgreSQL 18);
* functions and types added later are usable by no runtime role until granted;
* the lease clock starts when the row is leased, and no lease outlasts the zombie threshold;
* no login may wake the workers with pg_notify;
* a text the driver cannot encode leaves symphony.db as a SymphonyError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import pytest
from tests.support.database import make_due, unique
from tests.support.outbox import instruction

from symphony.db import Database, PermissionDeniedError, Role, SymphonyError, test_only
from symphony.outbox import (
    ClaimedItem,
    Completion,
    OutboxStore,
    Outcome,
    ReviewDecision,
)

RUNTIME_ROLES = [Role.CONTROL, Role.INGEST, Role.EXECUTOR, Role.READONLY, Role.AUDITOR]


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


async def _states(admin_dsn: str, outbox_id: UUID) -> list[str]:
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT state::text AS s FROM symphony.payment_outbox_attempts "
                   " WHERE outbox_id = %s ORDER BY attempt_no", (outbox_id,))
    return [r["s"] for r in rows]


async def _under_review(store: OutboxStore, admin_dsn: str) -> UUID:
    """An item timed out once, then declined: unsettled at the two-attempt ceiling."""
    outbox_id = (await store.enqueue(instruction())).outbox_id
    first = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    second = await _claim(store, outbox_id)
    held = await store.complete(Completion(outbox_id, second.lease_token, Outcome.FAILED,
                                           error_code="DECLINED"))
    assert held.state == "RETRYABLE" and held.next_attempt_at is None
    return outbox_id


# -- defect 1: no FAILED after an ambiguous attempt -----------------------------------------------


async def test_failed_after_an_ambiguous_attempt_is_held_open(
    isolated_db: Database, policy: str
) -> None:
    # Failed on main: the second attempt's FAILED was recorded as terminal and the pending row
    # deleted, although the first attempt's call may still land at the rail.
    store = OutboxStore(isolated_db)
    outbox_id = (await store.enqueue(instruction())).outbox_id
    first = await _claim(store, outbox_id)
    await store.complete(Completion(outbox_id, first.lease_token, Outcome.RETRYABLE,
                                    error_code="RAIL_TIMEOUT", ambiguous=True))
    await test_only.query_no_role(
        policy, "UPDATE symphony.outbox_retry_policy SET max_attempts = 8")
    second = await _claim(store, outbox_id)
    assert second.needs_lookup
    result = await store.complete(Completion(outbox_id, second.lease_token, Outcome.FAILED,
                                             error_code="INSUFFICIENT_FUNDS"))
    assert result.state == "RETRYABLE" and result.next_attempt_at is not None
    assert await _states(policy, outbox_id) == [
        "DISPATCHING", "RETRYABLE", "DISPATCHING", "RETRYABLE"]
    third = await _claim(store, outbox_id)
    assert third.needs_lookup, "the next attempt asks the rail first"
    done = await store.complete(Completion(outbox_id, third.lease_token, Outcome.DISPATCHED,
                                           rail_transaction_id="rtx-late"))
    assert done.state == "DISPATCHED"


async def test_clean_failure_without_ambiguity_is_still_terminal(
    isolated_db: Database, policy: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = (await store.enqueue(instruction())).outbox_id
    item = await _claim(store, outbox_id)
    result = await store.complete(Completion(outbox_id, item.lease_token, Outcome.FAILED,
                                             error_code="INVALID_ACCOUNT"))
    assert result.state == "FAILED"
    assert await _states(policy, outbox_id) == ["DISPATCHING", "FAILED"]


async def test_unsettled_item_at_the_ceiling_goes_to_review_and_is_not_claimed(
    isolated_db: Database, policy: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store, policy)
    assert not [c for c in await store.claim(unique("w"), 1000, 60) if c.outbox_id == outbox_id]
    queue = {r.outbox_id: r for r in await store.review_queue()}
    assert queue[outbox_id].review_reason == "UNSETTLED_AT_RETRY_LIMIT"
    assert queue[outbox_id].last_error_code == "DECLINED"
    status = await store.status()
    assert status.under_review >= 1
    # Still pending (I7: not terminal), neither due nor awaiting a lookup that will not come.
    rows = await test_only.query_no_role(
        policy, "SELECT count(*) AS n FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (outbox_id,))
    assert rows[0]["n"] == 1


@pytest.mark.parametrize(
    ("decision", "tx", "final", "ledger_tail"),
    [
        (ReviewDecision.DISPATCHED, "rtx-confirmed", "DISPATCHED",
         ["DISPATCHING", "DISPATCHED"]),
        (ReviewDecision.FAILED, None, "FAILED", ["DISPATCHING", "FAILED"]),
    ],
)
async def test_operator_resolves_review_in_the_ledger_with_who_decided(
    isolated_db: Database, policy: str, decision: ReviewDecision, tx: str | None, final: str,
    ledger_tail: list[str],
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store, policy)
    outcome = await store.resolve_review(outbox_id, decision, decided_by="alice.oncall",
                                         reason="rail statement 2026-12-01", rail_transaction_id=tx)
    assert outcome.state == final
    rows = await test_only.query_no_role(
        policy,
        "SELECT state::text AS s, worker_id, error_detail, rail_transaction_id, recorded_by "
        "  FROM symphony.payment_outbox_attempts WHERE outbox_id = %s ORDER BY attempt_no",
        (outbox_id,))
    assert [r["s"] for r in rows[-2:]] == ledger_tail
    assert {r["worker_id"] for r in rows[-2:]} == {"review:alice.oncall"}
    assert rows[-1]["recorded_by"] == "symphony_control_svc"
    assert "alice.oncall" in rows[-1]["error_detail"]
    assert rows[-1]["rail_transaction_id"] == tx
    decisions = await test_only.query_no_role(
        policy, "SELECT decision, decided_by, reason FROM symphony.outbox_review_decisions "
                " WHERE outbox_id = %s", (outbox_id,))
    assert decisions == [{"decision": decision.value, "decided_by": "alice.oncall",
                          "reason": "rail statement 2026-12-01"}]
    pending = await test_only.query_no_role(
        policy, "SELECT 1 FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (outbox_id,))
    assert pending == []


async def test_operator_retry_puts_the_item_back_with_its_lookup(
    isolated_db: Database, policy: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store, policy)
    outcome = await store.resolve_review(outbox_id, ReviewDecision.RETRY, decided_by="bob",
                                         reason="rail recovered from its outage")
    assert outcome.state == "PENDING"
    again = await _claim(store, outbox_id)
    assert again.needs_lookup


@pytest.mark.parametrize(
    ("decision", "by", "reason", "tx", "code"),
    [
        (ReviewDecision.DISPATCHED, "alice", "confirmed", None, "INVALID_REVIEW_DECISION"),
        (ReviewDecision.FAILED, "alice", "   ", None, "INVALID_REVIEW_DECISION"),
        (ReviewDecision.FAILED, "", "confirmed", None, "INVALID_REVIEW_DECISION"),
        (ReviewDecision.FAILED, "alice", "bad\x01reason", None, "INVALID_REVIEW_DECISION"),
    ],
)
async def test_review_decision_is_validated_and_writes_nothing(
    isolated_db: Database, policy: str, decision: ReviewDecision, by: str, reason: str,
    tx: str | None, code: str,
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store, policy)
    before = await _states(policy, outbox_id)
    with pytest.raises(SymphonyError) as info:
        await store.resolve_review(outbox_id, decision, decided_by=by, reason=reason,
                                   rail_transaction_id=tx)
    assert info.value.code == code
    assert await _states(policy, outbox_id) == before


async def test_only_an_item_under_review_can_be_resolved(
    isolated_db: Database, policy: str
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = (await store.enqueue(instruction())).outbox_id
    with pytest.raises(SymphonyError) as info:
        await store.resolve_review(outbox_id, ReviewDecision.FAILED, decided_by="alice",
                                   reason="guess")
    assert info.value.code == "NOT_UNDER_REVIEW" and info.value.sqlstate == "SY040"
    assert await _states(policy, outbox_id) == []


async def test_control_may_resolve_a_review(isolated_db: Database, policy: str) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store, policy)
    rows = await test_only.execute_as_role(
        isolated_db, Role.CONTROL,
        "SELECT state FROM symphony.resolve_outbox_review(%s, 'FAILED', 'carol', 'confirmed')",
        (outbox_id,))
    assert rows == [{"state": "FAILED"}]


@pytest.mark.parametrize("role", [Role.INGEST, Role.EXECUTOR, Role.READONLY, Role.AUDITOR])
async def test_no_other_role_may_resolve_a_review(
    isolated_db: Database, policy: str, role: Role
) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store, policy)
    with pytest.raises(PermissionDeniedError):
        await test_only.execute_as_role(
            isolated_db, role,
            "SELECT * FROM symphony.resolve_outbox_review(%s, 'FAILED', 'mallory', 'x')",
            (outbox_id,))


async def test_review_decisions_are_append_only(isolated_db: Database, policy: str) -> None:
    store = OutboxStore(isolated_db)
    outbox_id = await _under_review(store, policy)
    await store.resolve_review(outbox_id, ReviewDecision.FAILED, decided_by="dave",
                               reason="confirmed with the rail")
    for statement in ("UPDATE symphony.outbox_review_decisions SET reason = 'rewritten'",
                      "DELETE FROM symphony.outbox_review_decisions"):
        with pytest.raises(SymphonyError) as info:
            await test_only.query_as_owner(policy, statement)
        assert info.value.sqlstate == "P0001"
    readers = await test_only.execute_as_role(
        isolated_db, Role.AUDITOR,
        "SELECT decided_by FROM symphony.outbox_review_decisions WHERE outbox_id = %s",
        (outbox_id,))
    assert readers == [{"decided_by": "dave"}]
    with pytest.raises(PermissionDeniedError):
        await test_only.execute_as_role(
            isolated_db, Role.EXECUTOR, "SELECT 1 FROM symphony.outbox_review_decisions")


async def test_zombie_requeue_waits_the_settle_time(isolated_db: Database) -> None:
    store = OutboxStore(isolated_db)
    admin = isolated_db.endpoint.admin_dsn
    outbox_id = (await store.enqueue(instruction())).outbox_id
    await _claim(store, outbox_id)
    await test_only.query_no_role(
        admin, "UPDATE symphony.payment_outbox_pending SET lease_expires_at = now() - "
               "interval '1 second' WHERE outbox_id = %s", (outbox_id,))
    assert [r.outbox_id for r in await store.repair_expired_leases(100)] == [outbox_id]
    assert not [c for c in await store.claim(unique("w"), 1000, 60) if c.outbox_id == outbox_id]
    await make_due(admin, outbox_id)
    assert (await _claim(store, outbox_id)).needs_lookup


# -- defect 3: trigger functions run as the owner -----------------------------------------------


async def test_every_trigger_function_runs_as_the_owner_with_a_pinned_search_path(
    db: Database,
) -> None:
    # Failed on main: check_pending_matches_ledger (a deferred constraint trigger) and the other
    # trigger functions ran as the invoking role; before PostgreSQL 18 the deferred one ran as
    # the role current at COMMIT (ingest, executor), which may read no outbox table.
    rows = await test_only.query_no_role(
        db.endpoint.admin_dsn,
        "SELECT DISTINCT p.proname, p.prosecdef, r.rolname AS owner, "
        "       coalesce(array_to_string(p.proconfig, ','), '') AS config "
        "  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "  JOIN pg_namespace n ON n.oid = c.relnamespace "
        "  JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_roles r ON r.oid = p.proowner "
        " WHERE n.nspname = 'symphony' AND NOT t.tgisinternal")
    assert len(rows) >= 7
    for row in rows:
        assert row["prosecdef"], f"{row['proname']} must be SECURITY DEFINER"
        assert row["owner"] == "symphony_owner"
        assert "search_path=symphony, pg_catalog, pg_temp" in row["config"], row["proname"]


# -- defect 4: later functions and types are usable by no runtime role --------------------------


async def test_function_added_by_a_later_migration_is_executable_by_no_runtime_role(
    isolated_db: Database,
) -> None:
    # Failed on main: ALTER DEFAULT PRIVILEGES ... IN SCHEMA cannot remove PUBLIC's built-in
    # EXECUTE, so a probe function created by the owner ran for symphony_ingest.
    admin = isolated_db.endpoint.admin_dsn
    name = f"probe_{unique('f').replace('-', '_')}"
    # What a scratch migration would do: create as the owner, grant nothing.
    await test_only.query_as_owner(
        admin, f"CREATE FUNCTION symphony.{name}() RETURNS integer LANGUAGE sql AS 'SELECT 1'")
    await test_only.query_as_owner(admin, f"CREATE TYPE symphony.{name}_t AS ENUM ('a')")
    for role in RUNTIME_ROLES:
        with pytest.raises(PermissionDeniedError):
            await test_only.execute_as_role(isolated_db, role, f"SELECT symphony.{name}()")
        # USAGE on a type governs what may be built on it (a value in a query needs none).
        with pytest.raises(PermissionDeniedError):
            await test_only.execute_as_role(
                isolated_db, role,
                f"CREATE TEMP TABLE probe (c symphony.{name}_t) ON COMMIT DROP")
    # Granted explicitly, it runs for exactly that role.
    await test_only.query_no_role(
        admin, f"GRANT EXECUTE ON FUNCTION symphony.{name}() TO symphony_ingest")
    rows = await test_only.execute_as_role(isolated_db, Role.INGEST,
                                           f"SELECT symphony.{name}() AS one")
    assert rows == [{"one": 1}]
    defaults = await test_only.query_no_role(
        admin, "SELECT count(*) AS n FROM pg_default_acl d JOIN pg_roles r "
               "    ON r.oid = d.defaclrole WHERE r.rolname = 'symphony_owner' "
               "   AND d.defaclnamespace = 0")
    assert defaults[0]["n"] == 2  # functions and types


# -- defect 5 and the lease cap -------------------------------------------------------------------


async def test_lease_clock_starts_when_the_row_is_leased(isolated_db: Database) -> None:
    # Failed on main: claimed_at / lease_expires_at came from now(), the transaction's start,
    # so a claim that waited inside its transaction handed out a lease already partly spent.
    store = OutboxStore(isolated_db)
    admin = isolated_db.endpoint.admin_dsn
    outbox_id = (await store.enqueue(instruction())).outbox_id
    rows = await test_only.statements_no_role(admin, [
        ("SELECT pg_sleep(0.3)", None),
        ("SELECT outbox_id, lease_expires_at, lease_expires_at - now() AS lease_left "
         "  FROM symphony.claim_outbox_batch('clock-test', 1000, 60)", None),
    ])
    mine = [r for r in rows if r["outbox_id"] == outbox_id]
    assert mine and mine[0]["lease_left"].total_seconds() >= 60.25
    await test_only.query_no_role(
        admin, "UPDATE symphony.payment_outbox_pending SET next_attempt_at = now() + "
               "interval '1 day', lease_token = NULL, claimed_by = NULL, "
               "lease_expires_at = NULL, claimed_at = NULL WHERE outbox_id = %s", (outbox_id,))


async def test_no_lease_outlasts_the_zombie_threshold(
    isolated_db: Database, policy: str
) -> None:
    # Failed on main: any lease up to 86,400 s was granted, whatever the repair's threshold.
    store = OutboxStore(isolated_db)
    await test_only.query_no_role(
        policy, "UPDATE symphony.outbox_retry_policy SET zombie_threshold_seconds = 90")
    with pytest.raises(SymphonyError) as info:
        await store.claim(unique("w"), 10, 91)
    assert info.value.code == "INVALID_LEASE" and info.value.sqlstate == "SY022"
    assert await store.zombie_threshold_seconds() == 90
    await store.claim(unique("w"), 1, 90)  # the threshold itself is fine


# -- smaller findings ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", RUNTIME_ROLES)
async def test_no_runtime_role_may_notify_the_work_channel(db: Database, role: Role) -> None:
    # Failed on main: pg_notify was executable by PUBLIC, so any login could wake every worker.
    with pytest.raises(PermissionDeniedError):
        await test_only.execute_as_role(
            db, role, "SELECT pg_notify('symphony_outbox_pending', '')")


async def test_enqueue_still_wakes_the_workers(db: Database) -> None:
    # The owner's trigger keeps its right to notify.
    store = OutboxStore(db)
    async with db.listen(Role.EXECUTOR, "symphony_outbox_pending") as listener:
        await store.enqueue(instruction())
        assert await listener.wait(5.0)


async def test_unencodable_text_leaves_the_db_boundary_as_a_symphony_error(db: Database) -> None:
    # Failed on main: a lone surrogate escaped symphony.db as a bare UnicodeEncodeError.
    store = OutboxStore(db)
    bad = instruction(instruction_id="instr-\ud800")
    with pytest.raises(SymphonyError) as info:
        await store.enqueue(bad)
    assert info.value.code == "INVALID_TEXT_ENCODING"
    assert isinstance(info.value.__cause__, UnicodeError)
