"""`audit verify` against planted violations: each database of its own gets a history built by
the real functions (every state an item can be in, a checkpoint over it), passes the audit,
then a superuser changes it behind the roles' back — triggers disabled inside the planting
transaction (and re-enabled ALWAYS), constraints dropped, rows written directly — and the
audit must fail, naming the invariant and the item (outbox_id, and attempt_no where a ledger
row is at fault).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import pytest
from tests.support.database import DatabaseFactory, admin_dsn_of, make_due
from tests.support.outbox import instruction

from symphony.cli import main
from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import (
    AuditReport,
    AuditStore,
    Completion,
    OutboxStore,
    Outcome,
    ReviewDecision,
    verify,
)
from symphony.outbox.cancel import CancelOutcome, CancelStore


@dataclass(frozen=True)
class History:
    """One item in each state; `admin` is the database's admin DSN."""

    admin: str
    dispatched: UUID      # DISPATCHING, DISPATCHED
    failed: UUID          # DISPATCHING, FAILED
    retrying: UUID        # DISPATCHING, RETRYABLE (pending)
    ambiguous: UUID       # DISPATCHING, RETRYABLE ambiguous (pending, needs a lookup)
    retried_ok: UUID      # DISPATCHING, RETRYABLE, DISPATCHING, DISPATCHED
    zombie: UUID          # DISPATCHING, ZOMBIE_REQUEUE (pending, needs a lookup)
    fresh: UUID           # pending, never claimed
    under_review: UUID    # ambiguous at the retry ceiling: pending, under review
    review_failed: UUID   # ... then resolved FAILED by an operator


async def _build(db: Database, admin: str) -> History:
    store = OutboxStore(db)
    # Retries wait an hour unless a test makes them due: nothing moves by itself.
    await test_only.query_no_role(
        admin, "UPDATE symphony.outbox_retry_policy "
               "SET backoff_base_ms = 3600000, backoff_max_ms = 3600000")
    ids = [(await store.enqueue(instruction())).outbox_id for _ in range(6)]
    dispatched, failed, retrying, ambiguous, retried_ok, zombie = ids
    claimed = {c.outbox_id: c for c in await store.claim("audit-w1", 10, 60)}
    assert set(claimed) == set(ids)

    def done(oid: UUID, outcome: Outcome, *, ambiguous: bool = False) -> Completion:
        return Completion(oid, claimed[oid].lease_token, outcome, error_code="X",
                          ambiguous=ambiguous,
                          rail_transaction_id="rtx-1" if outcome is Outcome.DISPATCHED else None)

    await store.complete_batch([
        done(dispatched, Outcome.DISPATCHED), done(failed, Outcome.FAILED),
        done(retrying, Outcome.RETRYABLE), done(ambiguous, Outcome.RETRYABLE, ambiguous=True),
        done(retried_ok, Outcome.RETRYABLE),
    ])
    await make_due(admin, retried_ok)
    [again] = await store.claim("audit-w2", 10, 60)
    assert again.outbox_id == retried_ok
    await store.complete(Completion(retried_ok, again.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-2"))
    # The zombie: its worker died; the lease ran out (moved in the database) and was repaired.
    await test_only.query_no_role(
        admin, "UPDATE symphony.payment_outbox_pending "
               "SET lease_expires_at = now() - interval '1 second', "
               "    claimed_at = now() - interval '1 hour' WHERE outbox_id = %s", (zombie,))
    assert [r.outbox_id for r in await store.repair_expired_leases(100)] == [zombie]

    # Two items ambiguous at the retry ceiling go to review; an operator fails one of them.
    under_review = (await store.enqueue(instruction())).outbox_id
    review_failed = (await store.enqueue(instruction())).outbox_id
    await test_only.query_no_role(
        admin, "UPDATE symphony.outbox_retry_policy SET max_attempts = 1")
    claimed = {c.outbox_id: c for c in await store.claim("audit-w3", 10, 60)}
    assert set(claimed) == {under_review, review_failed}
    await store.complete_batch([done(under_review, Outcome.RETRYABLE, ambiguous=True),
                                done(review_failed, Outcome.RETRYABLE, ambiguous=True)])
    await test_only.query_no_role(
        admin, "UPDATE symphony.outbox_retry_policy SET max_attempts = 8")
    await store.resolve_review(review_failed, ReviewDecision.FAILED, decided_by="ops-ann",
                               reason="rail statement 42 shows no payment")
    fresh = (await store.enqueue(instruction())).outbox_id
    return History(admin, dispatched, failed, retrying, ambiguous, retried_ok, zombie, fresh,
                   under_review, review_failed)


@pytest.fixture
async def planted(make_database: DatabaseFactory) -> AsyncIterator[tuple[Database, History]]:
    """A database of the test's own with a full history and one checkpoint over it; the audit
    passes on it before anything is planted."""
    settings: DatabaseSettings = make_database()
    db = await Database.open(settings)
    history = await _build(db, admin_dsn_of(settings))
    await AuditStore(db).checkpoint()
    report = await verify(db)
    assert report.ok, [c.as_dict() for c in report.failed()]
    yield db, history
    await db.close()


async def plant(admin: str, triggers: Sequence[tuple[str, str]], *statements: str) -> None:
    """As the superuser, in one transaction: disable `triggers` ((table, trigger) pairs), run
    `statements`, enable the triggers ALWAYS again (as the migrations left them)."""
    steps: list[tuple[str, None]] = []
    for table, trigger in triggers:
        steps.append((f"ALTER TABLE symphony.{table} DISABLE TRIGGER {trigger}", None))
    steps += [(s, None) for s in statements]
    # Deferred checks fire now: a table with pending trigger events cannot be altered.
    steps.append(("SET CONSTRAINTS ALL IMMEDIATE", None))
    for table, trigger in triggers:
        steps.append((f"ALTER TABLE symphony.{table} ENABLE ALWAYS TRIGGER {trigger}", None))
    await test_only.statements_no_role(admin, steps)


LEDGER_APPEND_ONLY = ("payment_outbox_attempts", "payment_outbox_attempts_append_only")
REGISTRY_APPEND_ONLY = ("payment_instruction_registry", "payment_instruction_registry_append_only")
LEGAL_TRANSITION = ("payment_outbox_attempts", "payment_outbox_attempts_legal_transition")


def assert_names(
    report: AuditReport, invariant: str, outbox_id: UUID | None, problem: str | None = None,
    *, attempt_no: int | None = None, subject: str | None = None,
) -> None:
    """The audit failed on `invariant`, listing the item (and the problem, attempt, subject)."""
    assert not report.ok
    assert invariant in report.failed_invariants, report.failed_invariants
    listed = [v for c in report.invariant(invariant) for v in c.items]
    matching = [
        v for v in listed
        if (outbox_id is None or v.outbox_id == outbox_id)
        and (problem is None or v.problem == problem)
        and (attempt_no is None or v.attempt_no == attempt_no)
        and (subject is None or (v.subject or "").find(subject) >= 0)
    ]
    assert matching, f"{invariant} lists {[v.describe() for v in listed]}"


# An incremental audit (`--since`) from before the history: every item in scope, each check
# through its scoped form (I8 and I9: audit_sequence_violations_in, audit_lease_violations_in).
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def _u(value: UUID) -> str:
    return f"'{value}'::uuid"


# -- one plant per invariant ---------------------------------------------------------------------


async def test_i1_a_second_item_for_one_key(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [],
                "ALTER TABLE symphony.payment_instruction_registry "
                "DROP CONSTRAINT payment_instruction_registry_pkey",
                "INSERT INTO symphony.payment_instruction_registry "
                "(instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, "
                " rail_type, payload) "
                "SELECT instruction_id, idempotency_key, gen_random_uuid(), participant_id, "
                "       1000, rail_type, payload "
                "  FROM symphony.payment_instruction_registry WHERE outbox_id = "
                + _u(h.dispatched))
    assert_names(await verify(db), "I1", h.dispatched, "DUPLICATE_IDEMPOTENCY_KEY")


async def test_i2_two_pending_rows(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [],
                "ALTER TABLE symphony.payment_outbox_pending "
                "DROP CONSTRAINT payment_outbox_pending_pkey CASCADE",
                # Every column but the generated routing bucket.
                "INSERT INTO symphony.payment_outbox_pending "
                "  (outbox_id, participant_id, sequence_id, attempt_count, last_attempt_no, "
                "   next_attempt_at, needs_lookup, last_error_code, created_at) "
                "SELECT outbox_id, participant_id, sequence_id, attempt_count, "
                "       last_attempt_no, next_attempt_at, needs_lookup, last_error_code, "
                "       created_at "
                "  FROM symphony.payment_outbox_pending WHERE outbox_id = "
                + _u(h.retrying))
    assert_names(await verify(db), "I2", h.retrying, "DUPLICATE_PENDING_ROW")


async def test_i3_a_disabled_append_only_trigger(planted: tuple[Database, History]) -> None:
    db, h = planted
    await test_only.query_no_role(
        h.admin, "ALTER TABLE symphony.payment_outbox_attempts "
                 "DISABLE TRIGGER payment_outbox_attempts_append_only")
    assert_names(await verify(db), "I3", None, "TRIGGER_NOT_ENABLED_ALWAYS",
                 subject="payment_outbox_attempts_append_only")
    # Enabled again, but as an ordinary trigger: replica sessions would skip it.
    await test_only.query_no_role(
        h.admin, "ALTER TABLE symphony.payment_outbox_attempts "
                 "ENABLE TRIGGER payment_outbox_attempts_append_only")
    assert_names(await verify(db), "I3", None, "TRIGGER_NOT_ENABLED_ALWAYS",
                 subject="payment_outbox_attempts_append_only")


async def test_i3_a_disabled_checkpoint_writer_trigger(planted: tuple[Database, History]) -> None:
    # Checkpoints rely on it to know which ledger writers to wait for (migration
    # checkpoint_without_blocking): switching it off is reported like the history triggers.
    db, h = planted
    await test_only.query_no_role(
        h.admin, "ALTER TABLE symphony.payment_outbox_attempts "
                 "DISABLE TRIGGER payment_outbox_attempts_00_writer_xid")
    assert_names(await verify(db), "I3", None, "TRIGGER_NOT_ENABLED_ALWAYS",
                 subject="payment_outbox_attempts_00_writer_xid")


async def test_i3_a_dropped_clean_cancel_trigger(planted: tuple[Database, History]) -> None:
    # Without it a CANCELED row could follow an ambiguous attempt (a payment that may have
    # executed would read as canceled): its absence is reported like the transition trigger's.
    db, h = planted
    await test_only.query_no_role(
        h.admin, "DROP TRIGGER payment_outbox_attempts_cancel_is_clean "
                 "ON symphony.payment_outbox_attempts")
    assert_names(await verify(db), "I3", None, "TRIGGER_MISSING",
                 subject="payment_outbox_attempts_cancel_is_clean")


async def test_i3_a_runtime_role_granted_update(planted: tuple[Database, History]) -> None:
    db, h = planted
    await test_only.query_no_role(
        h.admin, "GRANT UPDATE (error_detail) ON symphony.payment_outbox_attempts "
                 "TO symphony_executor")
    assert_names(await verify(db), "I3", None, "PRIVILEGE_GRANTED",
                 subject="symphony_executor holds UPDATE on payment_outbox_attempts")


async def test_i3_a_dropped_trigger(planted: tuple[Database, History]) -> None:
    db, h = planted
    await test_only.query_no_role(
        h.admin, "DROP TRIGGER outbox_review_decisions_append_only "
                 "ON symphony.outbox_review_decisions")
    assert_names(await verify(db), "I3", None, "TRIGGER_MISSING",
                 subject="outbox_review_decisions_append_only")


async def test_i4_a_gap_in_attempt_numbers(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "UPDATE symphony.payment_outbox_attempts SET attempt_no = 3 "
                " WHERE attempt_no = 2 AND outbox_id = " + _u(h.dispatched))
    assert_names(await verify(db), "I4", h.dispatched, "ATTEMPT_GAP", attempt_no=3)


async def test_i4_attempt_count_disagrees_with_the_ledger(
    planted: tuple[Database, History],
) -> None:
    db, h = planted
    await plant(h.admin, [],
                "UPDATE symphony.payment_outbox_pending SET attempt_count = attempt_count + 4 "
                " WHERE outbox_id = " + _u(h.retrying))
    assert_names(await verify(db), "I4", h.retrying, "ATTEMPT_COUNT_MISMATCH")


async def test_i5_a_row_after_a_terminal_one(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [LEGAL_TRANSITION],
                "INSERT INTO symphony.payment_outbox_attempts "
                "(outbox_id, attempt_no, state, worker_id, lease_token) VALUES ("
                + _u(h.failed) + ", 3, 'DISPATCHING', 'intruder', gen_random_uuid())")
    report = await verify(db)
    assert_names(report, "I5", h.failed, "ILLEGAL_TRANSITION", attempt_no=3,
                 subject="FAILED -> DISPATCHING")


async def test_i6_a_second_dispatched_row(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [LEGAL_TRANSITION],
                "DROP INDEX symphony.payment_outbox_attempts_one_dispatched_idx",
                "DROP INDEX symphony.payment_outbox_attempts_one_terminal_idx",
                "INSERT INTO symphony.payment_outbox_attempts "
                "(outbox_id, attempt_no, state, worker_id, rail_transaction_id) VALUES ("
                + _u(h.dispatched) + ", 3, 'DISPATCHED', 'intruder', 'rtx-again')")
    report = await verify(db)
    assert_names(report, "I6", h.dispatched, "DUPLICATE_DISPATCHED")
    assert_names(report, "I9", h.dispatched, "NO_PRECEDING_DISPATCHING", attempt_no=3)


async def test_i7_a_live_item_removed_from_the_queue(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [("payment_outbox_pending",
                           "payment_outbox_pending_delete_matches_ledger")],
                "DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = "
                + _u(h.retrying))
    assert_names(await verify(db), "I7", h.retrying, "NEITHER_PENDING_NOR_TERMINAL")


async def test_i7_a_terminal_item_back_in_the_queue(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [("payment_outbox_pending",
                           "payment_outbox_pending_insert_matches_ledger")],
                "INSERT INTO symphony.payment_outbox_pending "
                "(outbox_id, participant_id, sequence_id, attempt_count, last_attempt_no) "
                "SELECT outbox_id, participant_id, sequence_id, 1, 2 "
                "  FROM symphony.payment_instruction_registry WHERE outbox_id = "
                + _u(h.dispatched))
    assert_names(await verify(db), "I7", h.dispatched, "PENDING_AND_TERMINAL")


async def test_i8_a_sequence_number_moved(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [REGISTRY_APPEND_ONLY],
                "UPDATE symphony.payment_instruction_registry SET sequence_id = sequence_id + 100"
                " WHERE outbox_id = " + _u(h.fresh))
    for report in (await verify(db), await verify(db, since=LONG_AGO)):
        assert_names(report, "I8", h.fresh, "SEQUENCE_GAP")
        assert_names(report, "I8", h.fresh, "PENDING_SEQUENCE_MISMATCH")
        assert_names(report, "I8", None, "ALLOCATOR_BEHIND", subject="participant-test")


async def test_i8_a_duplicate_sequence_number(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [REGISTRY_APPEND_ONLY],
                "ALTER TABLE symphony.payment_instruction_registry "
                "DROP CONSTRAINT payment_instruction_registry_participant_sequence_key",
                "UPDATE symphony.payment_instruction_registry r SET sequence_id = "
                " (SELECT sequence_id FROM symphony.payment_instruction_registry "
                "   WHERE outbox_id = " + _u(h.dispatched) + ") WHERE r.outbox_id = "
                + _u(h.failed))
    for report in (await verify(db), await verify(db, since=LONG_AGO)):
        assert_names(report, "I8", None, "DUPLICATE_SEQUENCE")


async def test_i9_an_outcome_under_another_lease(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "UPDATE symphony.payment_outbox_attempts SET lease_token = gen_random_uuid() "
                " WHERE state = 'DISPATCHED' AND outbox_id = " + _u(h.dispatched))
    for report in (await verify(db), await verify(db, since=LONG_AGO)):
        assert_names(report, "I9", h.dispatched, "LEASE_MISMATCH", attempt_no=2)


async def test_i9_a_live_lease_the_ledger_never_granted(
    planted: tuple[Database, History],
) -> None:
    db, h = planted
    await plant(h.admin, [],
                "UPDATE symphony.payment_outbox_pending SET lease_token = gen_random_uuid(), "
                " claimed_by = 'intruder', claimed_at = now(), "
                " lease_expires_at = now() + interval '1 minute' WHERE outbox_id = "
                + _u(h.fresh))
    for report in (await verify(db), await verify(db, since=LONG_AGO)):
        assert_names(report, "I9", h.fresh, "LIVE_LEASE_NOT_IN_LEDGER")


async def test_i10_failed_after_an_ambiguous_attempt(planted: tuple[Database, History]) -> None:
    """What the completion function refuses, written by a superuser directly: the item whose
    last attempt timed out is failed on a later clean decline."""
    db, h = planted
    await plant(h.admin, [],
                "INSERT INTO symphony.payment_outbox_attempts "
                "(outbox_id, attempt_no, state, worker_id, lease_token) "
                "SELECT outbox_id, 3, 'DISPATCHING', 'audit-w9', gen_random_uuid() "
                "  FROM symphony.payment_instruction_registry WHERE outbox_id = "
                + _u(h.ambiguous),
                "INSERT INTO symphony.payment_outbox_attempts "
                "(outbox_id, attempt_no, state, worker_id, lease_token, error_code) "
                "SELECT outbox_id, 4, 'FAILED', worker_id, lease_token, 'DECLINED' "
                "  FROM symphony.payment_outbox_attempts WHERE attempt_no = 3 AND outbox_id = "
                + _u(h.ambiguous),
                "DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = "
                + _u(h.ambiguous))
    assert_names(await verify(db), "I10", h.ambiguous, "FAILED_AFTER_AMBIGUOUS_ATTEMPT",
                 attempt_no=4)


async def test_i10_failed_after_a_zombie(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [],
                "INSERT INTO symphony.payment_outbox_attempts "
                "(outbox_id, attempt_no, state, worker_id, lease_token) "
                "SELECT outbox_id, 3, 'DISPATCHING', 'audit-w9', gen_random_uuid() "
                "  FROM symphony.payment_instruction_registry WHERE outbox_id = "
                + _u(h.zombie),
                "INSERT INTO symphony.payment_outbox_attempts "
                "(outbox_id, attempt_no, state, worker_id, lease_token, error_code) "
                "SELECT outbox_id, 4, 'FAILED', worker_id, lease_token, 'DECLINED' "
                "  FROM symphony.payment_outbox_attempts WHERE attempt_no = 3 AND outbox_id = "
                + _u(h.zombie),
                "DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = " + _u(h.zombie))
    assert_names(await verify(db), "I10", h.zombie, "FAILED_AFTER_AMBIGUOUS_ATTEMPT",
                 attempt_no=4)


async def test_i10_lookup_flag_lost(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [],
                "UPDATE symphony.payment_outbox_pending SET needs_lookup = false "
                " WHERE outbox_id = " + _u(h.ambiguous))
    assert_names(await verify(db), "I10", h.ambiguous, "LOOKUP_FLAG_LOST")


async def test_i10_review_without_lookup(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [],
                "ALTER TABLE symphony.payment_outbox_pending "
                "DROP CONSTRAINT payment_outbox_pending_review_shape",
                "UPDATE symphony.payment_outbox_pending SET needs_lookup = false "
                " WHERE outbox_id = " + _u(h.under_review))
    assert_names(await verify(db), "I10", h.under_review, "REVIEW_WITHOUT_LOOKUP")


async def test_i10_review_outcome_without_its_decision(
    planted: tuple[Database, History],
) -> None:
    db, h = planted
    await plant(h.admin, [("outbox_review_decisions", "outbox_review_decisions_append_only")],
                "DELETE FROM symphony.outbox_review_decisions WHERE outbox_id = "
                + _u(h.review_failed))
    report = await verify(db)
    assert_names(report, "I10", h.review_failed, "REVIEW_ROW_WITHOUT_DECISION")
    # Without the operator's decision, the FAILED is one after an ambiguous attempt.
    assert_names(report, "I10", h.review_failed, "FAILED_AFTER_AMBIGUOUS_ATTEMPT")


# -- cancellation (I5, I6, I7, I10 with CANCELED) ----------------------------------------------------

CANCEL_CLEAN = ("payment_outbox_attempts", "payment_outbox_attempts_cancel_is_clean")


async def test_i5_canceled_after_a_dispatching_row(planted: tuple[Database, History]) -> None:
    """A cancel while the dispatch was in flight, written behind the rules' back."""
    db, h = planted
    await plant(h.admin, [LEGAL_TRANSITION, CANCEL_CLEAN],
                "INSERT INTO symphony.payment_outbox_attempts "
                "(outbox_id, attempt_no, state, worker_id, lease_token) "
                "SELECT outbox_id, 3, 'DISPATCHING', 'audit-w9', gen_random_uuid() "
                "  FROM symphony.payment_instruction_registry WHERE outbox_id = "
                + _u(h.retrying),
                "INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state, "
                " worker_id) VALUES (" + _u(h.retrying) + ", 4, 'CANCELED', 'participant:x')",
                "DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = "
                + _u(h.retrying))
    assert_names(await verify(db), "I5", h.retrying, "ILLEGAL_TRANSITION", attempt_no=4,
                 subject="DISPATCHING -> CANCELED")


async def test_i6_and_i5_canceled_after_dispatched(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [LEGAL_TRANSITION],
                "DROP INDEX symphony.payment_outbox_attempts_one_terminal_idx",
                "INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state, "
                " worker_id) VALUES (" + _u(h.dispatched) + ", 3, 'CANCELED', 'intruder')")
    report = await verify(db)
    assert_names(report, "I6", h.dispatched, "DUPLICATE_TERMINAL")
    assert_names(report, "I5", h.dispatched, "ILLEGAL_TRANSITION", attempt_no=3,
                 subject="DISPATCHED -> CANCELED")


async def test_i7_canceled_but_still_queued(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [("payment_outbox_attempts",
                           "payment_outbox_attempts_terminal_leaves_pending")],
                "INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state, "
                " worker_id) VALUES (" + _u(h.fresh) + ", 1, 'CANCELED', 'participant:x')")
    assert_names(await verify(db), "I7", h.fresh, "PENDING_AND_TERMINAL")


async def test_i10_canceled_after_an_ambiguous_attempt(
    planted: tuple[Database, History],
) -> None:
    """What the cancel refuses (the call that timed out may still land), written directly."""
    db, h = planted
    await plant(h.admin, [CANCEL_CLEAN],
                "DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = "
                + _u(h.ambiguous),
                "INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state, "
                " worker_id) VALUES (" + _u(h.ambiguous) + ", 3, 'CANCELED', 'participant:x')")
    report = await verify(db)
    assert_names(report, "I10", h.ambiguous, "CANCELED_AFTER_AMBIGUOUS_ATTEMPT", attempt_no=3)
    # The ledger itself is legal (a RETRYABLE may be canceled): only I10 knows it was not clean.
    assert "I5" not in report.failed_invariants


async def test_a_clean_cancel_passes_the_audit_from_the_checkpoint(
    planted: tuple[Database, History],
) -> None:
    """A real cancellation after the checkpoint: the routine audit's scoped I9 (a CANCELED row
    holds no lease and follows no DISPATCHING) and every other check accept it."""
    db, h = planted
    result = await CancelStore(db).cancel_as_operator(h.fresh, canceled_by="ops-ann",
                                                      reason="customer asked")
    assert result.outcome is CancelOutcome.CANCELED, result
    for report in (await verify(db, since_checkpoint=True), await verify(db, since=LONG_AGO),
                   await verify(db)):
        assert report.ok, [c.as_dict() for c in report.failed()]


async def test_i9_a_canceled_row_with_a_lease(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [CANCEL_CLEAN],
                "DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = "
                + _u(h.retrying),
                "INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state, "
                " worker_id, lease_token) VALUES (" + _u(h.retrying)
                + ", 3, 'CANCELED', 'participant:x', gen_random_uuid())")
    for report in (await verify(db), await verify(db, since=LONG_AGO)):
        assert_names(report, "I9", h.retrying, "CANCELED_WITH_LEASE", attempt_no=3)


# -- events (E1) ------------------------------------------------------------------------------------

EVENTS_APPEND_ONLY = ("payment_events", "payment_events_append_only")


async def test_e1_an_event_removed(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [EVENTS_APPEND_ONLY],
                "DELETE FROM symphony.payment_events WHERE event_type = 'payment.dispatched' "
                "   AND outbox_id = " + _u(h.dispatched))
    report = await verify(db)
    assert_names(report, "E1", h.dispatched, "EVENT_MISSING", subject="payment.dispatched")
    # The participant's numbering has a hole where it was (unless it was the last one).
    assert report.check("events").violations >= 1


async def test_e1_an_event_without_its_cause(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [],
                "INSERT INTO symphony.payment_events "
                "  (participant_id, event_seq, event_type, outbox_id, payload) "
                "SELECT participant_id, (SELECT max(event_seq) + 1 FROM symphony.payment_events"
                "                         WHERE participant_id = r.participant_id), "
                "       'payment.failed', outbox_id, '{}' "
                "  FROM symphony.payment_instruction_registry r WHERE outbox_id = "
                + _u(h.dispatched))
    assert_names(await verify(db), "E1", h.dispatched, "EVENT_WITHOUT_CAUSE",
                 subject="payment.failed")


async def test_e1_a_duplicated_event(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [],
                "INSERT INTO symphony.payment_events "
                "  (participant_id, event_seq, event_type, outbox_id, payload) "
                "SELECT participant_id, (SELECT max(event_seq) + 1 FROM symphony.payment_events"
                "                         WHERE participant_id = e.participant_id), "
                "       event_type, outbox_id, payload "
                "  FROM symphony.payment_events e WHERE event_type = 'payment.created' "
                "   AND outbox_id = " + _u(h.fresh))
    assert_names(await verify(db), "E1", h.fresh, "DUPLICATE_EVENT", subject="payment.created")


async def test_e1_a_gap_in_event_numbers(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [EVENTS_APPEND_ONLY],
                "UPDATE symphony.payment_events SET event_seq = event_seq + 10 "
                " WHERE event_type = 'payment.created' AND outbox_id = " + _u(h.fresh))
    assert_names(await verify(db), "E1", h.fresh, "EVENT_SEQUENCE_GAP")


async def test_e1_a_disabled_event_trigger_misses_the_next_outcome(
    planted: tuple[Database, History],
) -> None:
    db, h = planted
    await test_only.query_no_role(
        h.admin, "ALTER TABLE symphony.payment_outbox_attempts "
                 "DISABLE TRIGGER payment_outbox_attempts_emit_events")
    store = OutboxStore(db)
    await make_due(h.admin, h.retrying)
    [item] = [c for c in await store.claim("audit-w9", 10, 60) if c.outbox_id == h.retrying]
    await store.complete(Completion(item.outbox_id, item.lease_token, Outcome.DISPATCHED,
                                    rail_transaction_id="rtx-quiet"))
    report = await verify(db)
    assert_names(report, "E1", h.retrying, "EVENT_MISSING", subject="payment.dispatched")
    assert_names(report, "I3", None, "TRIGGER_NOT_ENABLED_ALWAYS",
                 subject="payment_outbox_attempts_emit_events")


# -- tampering -------------------------------------------------------------------------------------


async def test_an_edited_ledger_row(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "UPDATE symphony.payment_outbox_attempts SET rail_transaction_id = 'rtx-forged'"
                " WHERE state = 'DISPATCHED' AND outbox_id = " + _u(h.retried_ok))
    report = await verify(db)
    assert report.failed_invariants == ["T2"]
    assert_names(report, "T2", h.retried_ok, "CHAIN_BROKEN", attempt_no=4)


async def test_an_edited_ledger_row_with_its_digest_recomputed(
    planted: tuple[Database, History],
) -> None:
    """The forger knows the serialization and re-seals the row (the head of its chain): the
    chain is consistent again, but the checkpoint still holds the old head."""
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "UPDATE symphony.payment_outbox_attempts a "
                "   SET rail_transaction_id = 'rtx-forged', row_digest = symphony.attempt_digest("
                "       p.row_digest, a.outbox_id, a.attempt_no, a.state, a.worker_id, "
                "       a.error_code, a.error_detail, 'rtx-forged', a.recorded_at, "
                "       a.recorded_by, a.lease_digest) "
                "  FROM symphony.payment_outbox_attempts p "
                " WHERE p.outbox_id = a.outbox_id AND p.attempt_no = a.attempt_no - 1 "
                "   AND a.state = 'DISPATCHED' AND a.outbox_id = " + _u(h.dispatched))
    report = await verify(db)
    assert report.check("ledger_chain").ok
    assert_names(report, "T3", h.dispatched, "ROW_CHANGED", attempt_no=2)
    assert_names(report, "T3", None, "HEADS_CHANGED", subject="checkpoint 1")


async def test_an_inserted_ledger_row(planted: tuple[Database, History]) -> None:
    """A row slipped into the middle of a history, the later rows renumbered around it."""
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY, LEGAL_TRANSITION],
                "UPDATE symphony.payment_outbox_attempts SET attempt_no = attempt_no + 10 "
                " WHERE attempt_no >= 3 AND outbox_id = " + _u(h.retried_ok),
                "UPDATE symphony.payment_outbox_attempts SET attempt_no = attempt_no - 9 "
                " WHERE attempt_no >= 13 AND outbox_id = " + _u(h.retried_ok),
                "INSERT INTO symphony.payment_outbox_attempts "
                "(attempt_id, outbox_id, attempt_no, state, worker_id, lease_token) "
                "OVERRIDING SYSTEM VALUE VALUES "
                "(0, " + _u(h.retried_ok) + ", 3, 'DISPATCHING', 'intruder', gen_random_uuid())")
    report = await verify(db)
    assert_names(report, "T2", h.retried_ok, "CHAIN_BROKEN", attempt_no=4)
    assert_names(report, "T3", h.retried_ok, "ROW_CHANGED", attempt_no=4)
    assert_names(report, "T3", None, "ROW_COUNT_CHANGED", subject="checkpoint 1")


async def test_an_inserted_ledger_row_at_the_end_below_the_checkpoint(
    planted: tuple[Database, History],
) -> None:
    """Correctly sealed and appended at the end of an item's chain, but numbered as if it had
    been there when the checkpoint was taken."""
    db, h = planted
    await plant(h.admin, [],
                "INSERT INTO symphony.payment_outbox_attempts "
                "(attempt_id, outbox_id, attempt_no, state, worker_id, lease_token) "
                "OVERRIDING SYSTEM VALUE VALUES "
                "(0, " + _u(h.retrying) + ", 3, 'DISPATCHING', 'intruder', gen_random_uuid())")
    report = await verify(db)
    assert report.check("ledger_chain").ok
    assert_names(report, "T3", h.retrying, "ROW_INSERTED", attempt_no=3)


async def test_a_deleted_ledger_row_in_the_middle(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "DELETE FROM symphony.payment_outbox_attempts WHERE attempt_no = 2 "
                "   AND outbox_id = " + _u(h.retried_ok))
    report = await verify(db)
    assert_names(report, "T2", h.retried_ok, "CHAIN_BROKEN", attempt_no=3)
    assert_names(report, "I4", h.retried_ok, "ATTEMPT_GAP", attempt_no=3)


async def test_a_deleted_ledger_row_at_the_end(planted: tuple[Database, History]) -> None:
    """The newest row of an item removed: no later row notices, the checkpoint does."""
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY,
                          ("payment_outbox_pending", "payment_outbox_pending_monotonic")],
                "DELETE FROM symphony.payment_outbox_attempts WHERE attempt_no = 2 "
                "   AND outbox_id = " + _u(h.retrying),
                "UPDATE symphony.payment_outbox_pending SET last_attempt_no = 1 "
                " WHERE outbox_id = " + _u(h.retrying))
    report = await verify(db)
    assert_names(report, "T3", h.retrying, "ROW_REMOVED", attempt_no=2)
    assert_names(report, "T3", None, "ROW_COUNT_CHANGED", subject="checkpoint 1")


async def test_an_edited_payload_in_the_registry(planted: tuple[Database, History]) -> None:
    db, h = planted
    await plant(h.admin, [REGISTRY_APPEND_ONLY],
                "UPDATE symphony.payment_instruction_registry "
                "   SET payload = jsonb_set(payload, '{destination}', '\"acct-attacker\"') "
                " WHERE outbox_id = " + _u(h.fresh))
    report = await verify(db)
    assert report.failed_invariants == ["T1"]
    assert_names(report, "T1", h.fresh, "INSTRUCTION_CHANGED")


async def test_an_edited_amount_with_the_instruction_digest_recomputed(
    planted: tuple[Database, History],
) -> None:
    """Re-sealing the instruction breaks the link from the item's first ledger row."""
    db, h = planted
    await plant(h.admin, [REGISTRY_APPEND_ONLY],
                "UPDATE symphony.payment_instruction_registry "
                "   SET payload = jsonb_set(payload, '{amount}', '\"99999.00\"'), "
                "       instruction_digest = symphony.instruction_digest(outbox_id, "
                "           participant_id, instruction_id, idempotency_key, rail_type, "
                "           jsonb_set(payload, '{amount}', '\"99999.00\"'), created_at) "
                " WHERE outbox_id = " + _u(h.dispatched))
    report = await verify(db)
    assert report.check("instruction_digests").ok
    assert_names(report, "T2", h.dispatched, "CHAIN_BROKEN", attempt_no=1)


async def test_a_removed_checkpoint(planted: tuple[Database, History]) -> None:
    db, h = planted
    await AuditStore(db).checkpoint()
    await plant(h.admin, [("ledger_checkpoint_heads", "ledger_checkpoint_heads_append_only"),
                          ("ledger_checkpoints", "ledger_checkpoints_append_only")],
                "DELETE FROM symphony.ledger_checkpoint_heads WHERE checkpoint_id = 1",
                "DELETE FROM symphony.ledger_checkpoints WHERE checkpoint_id = 1")
    assert_names(await verify(db), "T3", None, "CHECKPOINT_MISSING", subject="checkpoint 2")


# -- how the command reports it -----------------------------------------------------------------


async def test_the_command_names_the_invariant_and_the_item(
    planted: tuple[Database, History], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "UPDATE symphony.payment_outbox_attempts SET error_detail = 'nothing to see' "
                " WHERE attempt_no = 2 AND outbox_id = " + _u(h.failed))
    assert db.endpoint is not None
    monkeypatch.setenv("DATABASE_URL", h.admin)
    monkeypatch.setenv("SYMPHONY_HOME", str(db.settings.home))
    import asyncio

    code = await asyncio.to_thread(main, ["audit", "verify"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL T2  ledger_chain" in out
    assert f"{h.failed} attempt 2: CHAIN_BROKEN" in out
    assert "PASS I5  legal_transitions" in out
    assert out.strip().endswith("AUDIT FAILED: T2")


# -- the routine audit: from the latest checkpoint -----------------------------------------------


async def test_audit_since_the_checkpoint_passes_and_reads_only_the_live_items(
    planted: tuple[Database, History],
) -> None:
    db, _ = planted
    full = await verify(db)
    report = await verify(db, since_checkpoint=True)
    assert report.ok, [c.as_dict() for c in report.failed()]
    assert (report.mode, report.checkpoint_id) == ("since-checkpoint", 1)
    # Nothing was written after the checkpoint: the scope is the live (pending) items.
    assert report.counts["items"] == report.counts["pending"] == full.counts["pending"]
    assert report.counts["ledger_rows"] < full.counts["ledger_rows"]
    assert report.check("latest_checkpoint").skipped


async def test_audit_since_the_checkpoint_finds_a_row_changed_after_it(
    planted: tuple[Database, History],
) -> None:
    db, h = planted
    store = OutboxStore(db)
    new = (await store.enqueue(instruction())).outbox_id
    await make_due(h.admin, new)
    claimed = [c.outbox_id for c in await store.claim("audit-w4", 20, 60)]
    assert new in claimed
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "UPDATE symphony.payment_outbox_attempts SET worker_id = 'someone-else' "
                " WHERE attempt_no = 1 AND outbox_id = " + _u(new))
    report = await verify(db, since_checkpoint=True)
    assert report.mode == "since-checkpoint"
    assert_names(report, "T2", new, "CHAIN_BROKEN", attempt_no=1)


async def test_audit_since_the_checkpoint_leaves_untouched_history_to_the_full_audit(
    planted: tuple[Database, History],
) -> None:
    """A row below the checkpoint of an item that has not moved since is the full audit's:
    the routine audit does not read it (what makes its cost independent of the ledger's
    size); `audit verify` without a flag does."""
    db, h = planted
    await plant(h.admin, [LEDGER_APPEND_ONLY],
                "UPDATE symphony.payment_outbox_attempts SET error_detail = 'nothing to see' "
                " WHERE attempt_no = 2 AND outbox_id = " + _u(h.failed))
    assert (await verify(db, since_checkpoint=True)).ok
    assert_names(await verify(db), "T2", h.failed, "CHAIN_BROKEN", attempt_no=2)


async def test_audit_since_the_checkpoint_without_one_is_full(
    make_database: DatabaseFactory,
) -> None:
    db = await Database.open(make_database())
    try:
        await OutboxStore(db).enqueue(instruction())
        report = await verify(db, since_checkpoint=True)
        assert report.ok and (report.mode, report.checkpoint_id) == ("full", None)
        assert not report.check("latest_checkpoint").skipped
    finally:
        await db.close()
