"""Stateful model check: the outbox on a real database against a model of the specification.

A Hypothesis `RuleBasedStateMachine` drives enqueues (new keys, repeated keys, reused keys with
another payload, the same pair from another participant), claims by several workers,
completions (success, retryable, terminal, ambiguous; a stale token is fenced), lease expiry
(moved in the database, never slept), the zombie repair, rail lookups before a re-send
(EXECUTED -> DISPATCHED without a send, NOT_FOUND -> send, no answer -> held open) and an
operator's review decisions. The model also plays the rail: it knows which references were
executed, so it can tell a payment executed twice, or failed although it was paid.

After every step the model and the database must agree — the pending set, each item's attempt
count, lease, needs_lookup and review flag, each item's whole ledger history, terminal states —
and the invariants hold (tests/support/invariants.py: the auditor's queries plus direct SQL).

Every run of the machine gets a database of its own, copied from a migrated template (cheap),
with a retry policy whose backoff and settle time are an hour: nothing becomes due by itself
while a run lasts; the `make_due` rule moves the clock in the database instead.

Budget: the default profile fits in CI (about a minute). `SYMPHONY_SOAK=1` runs the soak
profile; `SYMPHONY_MODEL_EXAMPLES` and `SYMPHONY_MODEL_STEPS` override either (see
docs/fault-report.md for the numbers of one soak run).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from psycopg.conninfo import conninfo_to_dict
from tests.support.database import DatabaseFactory, admin_dsn_of, make_due
from tests.support.invariants import check_invariants
from tests.support.outbox import register_participant

from symphony.db import (
    Database,
    DatabaseSettings,
    IdempotencyConflictError,
    InvalidRequestError,
    SymphonyError,
    test_only,
)
from symphony.outbox import Completion, OutboxStore, Outcome, PaymentInstruction, ReviewDecision
from symphony.outbox.cancel import CancelOutcome, CancelStore

pytestmark = pytest.mark.integration

MAX_ATTEMPTS = 3
THRESHOLD = 120
LEASE = 60
WORKERS = ("worker-a", "worker-b", "worker-c")
HOUR_MS = 3_600_000

SOAK = os.environ.get("SYMPHONY_SOAK") == "1"
EXAMPLES = int(os.environ.get("SYMPHONY_MODEL_EXAMPLES", "200" if SOAK else "20"))
STEPS = int(os.environ.get("SYMPHONY_MODEL_STEPS", "100" if SOAK else "40"))

MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=not SOAK,  # CI: the same examples every run; the soak explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)

TERMINAL = ("DISPATCHED", "FAILED", "CANCELED")
# What happens to one dispatch: the rail's answer, or the worker stalling (its lease runs
# out) before the call left or after the rail executed it.
ANSWERS = ("success", "retryable", "terminal", "ambiguous_executed", "ambiguous_not_executed",
           "stall_before_call", "stall_after_execution")


@dataclass
class Item:
    """What the model knows of one logical item."""

    outbox_id: UUID
    participant: str
    instruction_id: str
    key: str
    amount: str
    sequence_id: int
    status: str = "due"  # due, scheduled, leased, review, DISPATCHED, FAILED, CANCELED
    attempt_count: int = 0
    last_attempt_no: int = 0
    needs_lookup: bool = False
    history: list[str] = field(default_factory=list)
    token: UUID | None = None
    worker: str | None = None
    lease_expired: bool = False
    call_landed: bool = False
    stale_tokens: list[UUID] = field(default_factory=list)
    # Some attempt may have been executed without the outbox knowing (ambiguous, zombie).
    maybe_executed: bool = False
    failed_by_worker: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class Environment:
    """What every run of the machine shares: the server and a migrated template."""

    server_admin_dsn: str
    template: str
    home: Path
    runs: int = 0
    steps: int = 0
    events: Counter[str] = field(default_factory=Counter)


def _amount(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self, env: Environment) -> None:
        super().__init__()
        self.env = env
        env.runs += 1
        self.loop = asyncio.new_event_loop()
        self.name = f"symphony_model_{uuid.uuid4().hex[:12]}"
        self.admin_dsn = self._run(_copy_template(env, self.name))
        self.db = self._run(Database.open(DatabaseSettings(
            DATABASE_URL=self.admin_dsn, SYMPHONY_HOME=str(env.home))))
        self.store = OutboxStore(self.db)
        self.participants = [
            self._run(register_participant(self.db, f"model-{c}")) for c in "abc"]
        self.items: list[Item] = []
        self.by_id: dict[UUID, Item] = {}
        self.pairs: set[tuple[str, str, str]] = set()
        self.last_sequence: dict[str, int] = {}
        self.counter = 0
        # The rail: executions and the transaction id per reference.
        self.executions: dict[UUID, int] = {}
        self.rail_tx: dict[UUID, str] = {}

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self._run(self.db.close())
            self._run(test_only.drop_database(self.env.server_admin_dsn, self.name))
        finally:
            self.loop.close()

    # -- helpers ------------------------------------------------------------------------------

    def _pick(self, pick: int, predicate: Any) -> Item | None:
        candidates = [i for i in self.items if predicate(i)]
        return candidates[pick % len(candidates)] if candidates else None

    def _enqueue(self, participant: str, instruction_id: str, key: str, amount: str) -> Any:
        return self._run(self.store.enqueue(PaymentInstruction(
            instruction_id=instruction_id, idempotency_key=key, participant_id=participant,
            rail_type="SEPA_CT",
            payload={"amount": amount, "currency": "EUR", "destination": "acct-model"})))

    def _add(self, participant: str, instruction_id: str, key: str, amount: str) -> None:
        result = self._enqueue(participant, instruction_id, key, amount)
        assert result.created and result.state == "PENDING"
        assert result.outbox_id not in self.by_id
        # I8: strictly increasing per participant, in enqueue order.
        assert result.sequence_id > self.last_sequence.get(participant, 0)
        self.last_sequence[participant] = result.sequence_id
        item = Item(result.outbox_id, participant, instruction_id, key, amount,
                    result.sequence_id)
        self.items.append(item)
        self.by_id[item.outbox_id] = item
        self.pairs.add((participant, instruction_id, key))

    def _execute_at_rail(self, item: Item) -> None:
        """The rail executes the payment; a second execution is the bug this hunts."""
        count = self.executions.get(item.outbox_id, 0) + 1
        assert count == 1, f"{item.outbox_id} executed twice at the rail"
        self.executions[item.outbox_id] = count
        self.rail_tx[item.outbox_id] = f"rtx-{item.outbox_id.hex[:12]}"

    def _complete(self, item: Item, outcome: Outcome, *, ambiguous: bool = False,
                  code: str | None = None) -> None:
        """Record an outcome under the item's lease; check the database's decision."""
        assert item.token is not None
        rail_tx = self.rail_tx.get(item.outbox_id) if outcome is Outcome.DISPATCHED else None
        [result] = self._run(self.store.complete_batch([Completion(
            item.outbox_id, item.token, outcome, error_code=code, ambiguous=ambiguous,
            rail_transaction_id=rail_tx)]))
        assert not result.fenced
        # The specification's decision, written from the rules rather than from the SQL.
        unsettled = item.needs_lookup or ambiguous
        at_ceiling = outcome is not Outcome.DISPATCHED and item.attempt_count >= MAX_ATTEMPTS
        if outcome is Outcome.DISPATCHED:
            state = "DISPATCHED"
        elif outcome is Outcome.FAILED and not item.needs_lookup:
            state = "FAILED"
        elif at_ceiling and not unsettled:
            state = "FAILED"  # RETRY_LIMIT_EXCEEDED: the rail certainly never executed it
        else:
            state = "RETRYABLE"  # a FAILED after an ambiguous attempt is held open
        review = state == "RETRYABLE" and at_ceiling and unsettled
        assert result.state == state, (item, outcome, ambiguous, result)
        self.env.events[f"recorded {state}" + (" (review)" if review else "")] += 1
        if outcome is Outcome.FAILED and state != "FAILED":
            self.env.events["FAILED held open"] += 1
        assert result.attempt_no == item.last_attempt_no + 1
        item.history.append(state)
        item.last_attempt_no += 1
        item.stale_tokens.append(item.token)
        item.token = item.worker = None
        item.lease_expired = False
        item.needs_lookup = item.needs_lookup or unsettled
        if state in TERMINAL:
            item.status = state
            item.failed_by_worker = state == "FAILED"
        elif review:
            item.status = "review"
            assert result.next_attempt_at is None
        else:
            item.status = "scheduled"
            assert result.next_attempt_at is not None

    # -- enqueue ------------------------------------------------------------------------------

    @rule(participants=st.lists(st.integers(0, 2), min_size=1, max_size=3),
          cents=st.integers(1, 10**12))
    def enqueue_new(self, participants: list[int], cents: int) -> None:
        for n, participant in enumerate(participants):
            self.counter += 1
            self._add(self.participants[participant], f"instr-{self.counter}",
                      f"key-{self.counter}", _amount(cents + n))

    @rule(pick=st.integers(0, 10**6))
    def enqueue_repeated(self, pick: int) -> None:
        item = self._pick(pick, lambda i: True)
        if item is None:
            return
        result = self._enqueue(item.participant, item.instruction_id, item.key, item.amount)
        assert (result.outbox_id, result.sequence_id, result.created) == (
            item.outbox_id, item.sequence_id, False)  # I1, for ever (also once terminal)

    @rule(pick=st.integers(0, 10**6))
    def enqueue_reused_key_other_payload(self, pick: int) -> None:
        item = self._pick(pick, lambda i: True)
        if item is None:
            return
        other = _amount(int(item.amount.replace(".", "")) + 1)
        with pytest.raises(IdempotencyConflictError) as refused:
            self._enqueue(item.participant, item.instruction_id, item.key, other)
        assert refused.value.code == "IDEMPOTENCY_KEY_REUSED"  # nothing written: see invariant

    @rule(pick=st.integers(0, 10**6), participant=st.integers(0, 2))
    def enqueue_same_pair_other_participant(self, pick: int, participant: int) -> None:
        item = self._pick(pick, lambda i: True)
        if item is None:
            return
        who = self.participants[participant]
        if (who, item.instruction_id, item.key) in self.pairs:
            return  # that participant has this pair already: enqueue_repeated covers it
        self._add(who, item.instruction_id, item.key, item.amount)

    # -- claim --------------------------------------------------------------------------------

    def _claim(self, worker: str, batch: int) -> list[Item]:
        due = {i.outbox_id for i in self.items if i.status == "due"}
        claimed = self._run(self.store.claim(worker, batch, LEASE))
        assert len(claimed) == min(batch, len(due))
        items = []
        for c in claimed:
            assert c.outbox_id in due, "claimed an item that is not due"
            item = self.by_id[c.outbox_id]
            assert c.needs_lookup == item.needs_lookup
            # Money: an item the database lets a worker send without asking the rail first
            # must be one no earlier attempt can have executed.
            if not c.needs_lookup:
                assert not item.maybe_executed and item.outbox_id not in self.executions
            item.attempt_count += 1
            item.last_attempt_no += 1
            assert (c.attempt_count, c.attempt_no) == (item.attempt_count, item.last_attempt_no)
            assert c.participant_id == item.participant
            assert c.payload["amount"] == item.amount
            item.history.append("DISPATCHING")
            item.status, item.token, item.worker = "leased", c.lease_token, worker
            items.append(item)
        return items

    @rule(worker=st.sampled_from(WORKERS), batch=st.integers(1, 4))
    def claim(self, worker: str, batch: int) -> None:
        """Claim and keep the items leased (their dispatch comes in a later step)."""
        self._claim(worker, batch)

    @rule(worker=st.sampled_from(WORKERS),
          answers=st.lists(st.sampled_from(ANSWERS), min_size=4, max_size=4),
          lookups=st.lists(st.booleans(), min_size=4, max_size=4),
          time_passed=st.booleans())
    def worker_cycle(
        self, worker: str, answers: list[str], lookups: list[bool], time_passed: bool
    ) -> None:
        """One whole executor cycle: claim a batch, dispatch each item, record each outcome
        (after the backoffs ran out, if `time_passed`)."""
        if time_passed:
            self.time_passes()
        for item, answer, lookup in zip(self._claim(worker, 4), answers, lookups, strict=False):
            self._dispatch(item, answer, lookup)

    @rule(pick=st.integers(0, 10**6), answer=st.sampled_from(ANSWERS),
          lookup_answers=st.booleans())
    def dispatch(self, pick: int, answer: str, lookup_answers: bool) -> None:
        item = self._pick(pick, lambda i: i.status == "leased" and not i.lease_expired)
        if item is not None:
            self._dispatch(item, answer, lookup_answers)

    def _dispatch(self, item: Item, answer: str, lookup_answers: bool) -> None:
        """What a correct worker does with a leased item, the rail answering `answer`."""
        if item.needs_lookup:
            # I10: ask the rail under the same reference before anything is sent.
            if not lookup_answers:
                self._complete(item, Outcome.RETRYABLE, ambiguous=True, code="LOOKUP_UNKNOWN")
                return
            if item.outbox_id in self.executions:
                self.env.events["lookup EXECUTED"] += 1
                self._complete(item, Outcome.DISPATCHED)  # EXECUTED: recorded, not re-sent
                return
            self.env.events["lookup NOT_FOUND"] += 1
            # NOT_FOUND: the earlier attempts did not execute; send.
        if answer.startswith("stall_"):
            self._lease_runs_out(item, call_landed=answer == "stall_after_execution")
        elif answer == "success":
            self._execute_at_rail(item)
            self._complete(item, Outcome.DISPATCHED)
        elif answer == "retryable":
            self._complete(item, Outcome.RETRYABLE, code="RAIL_UNAVAILABLE")
        elif answer == "terminal":
            self._complete(item, Outcome.FAILED, code="INSUFFICIENT_FUNDS")
        else:
            if answer == "ambiguous_executed":
                self._execute_at_rail(item)  # executed, the answer lost
            item.maybe_executed = True
            self._complete(item, Outcome.RETRYABLE, ambiguous=True, code="RAIL_TIMEOUT")

    @rule(pick=st.integers(0, 10**6),
          outcome=st.sampled_from([Outcome.DISPATCHED, Outcome.RETRYABLE, Outcome.FAILED]))
    def complete_with_stale_token(self, pick: int, outcome: Outcome) -> None:
        item = self._pick(pick, lambda i: i.stale_tokens)
        if item is None:
            return
        token = item.stale_tokens[pick % len(item.stale_tokens)]
        [result] = self._run(self.store.complete_batch(
            [Completion(item.outbox_id, token, outcome, rail_transaction_id="rtx-stale")]))
        assert result.fenced and result.state is None  # I9: nothing written (see invariant)
        self.env.events["fenced"] += 1

    # -- time, leases and the repair ----------------------------------------------------------

    @rule(pick=st.integers(0, 10**6), call_landed=st.booleans())
    def lease_runs_out(self, pick: int, call_landed: bool) -> None:
        """The lease holder stalls or dies mid-call (maybe after its call executed) and its
        lease runs out — moved in the database, not waited for."""
        item = self._pick(pick, lambda i: i.status == "leased" and not i.lease_expired)
        if item is not None:
            self._lease_runs_out(item, call_landed)

    def _lease_runs_out(self, item: Item, call_landed: bool) -> None:
        # A correct worker sends only what the rail has not executed (it looked up first).
        item.call_landed = call_landed and item.outbox_id not in self.executions
        if item.call_landed:
            self._execute_at_rail(item)
        item.lease_expired = True
        self.env.events["lease ran out"] += 1
        self._run(test_only.query_no_role(
            self.admin_dsn,
            "UPDATE symphony.payment_outbox_pending "
            "   SET claimed_at = now() - make_interval(secs => %(age)s), "
            "       lease_expires_at = now() - interval '1 second' "
            " WHERE outbox_id = %(id)s",
            {"age": THRESHOLD + 1, "id": item.outbox_id}))

    @rule(pick=st.integers(0, 10**6))
    def late_completion_before_the_repair(self, pick: int) -> None:
        """The stalled worker was slow, not dead: its answer arrives after the lease ran out
        but before any repair took the item. Its token still holds, so it is recorded."""
        item = self._pick(pick, lambda i: i.status == "leased" and i.lease_expired)
        if item is None:
            return
        if item.call_landed:
            self._complete(item, Outcome.DISPATCHED)
        else:
            self._complete(item, Outcome.RETRYABLE, code="RAIL_UNAVAILABLE")

    @rule()
    def repair(self) -> None:
        expected = {i.outbox_id for i in self.items if i.status == "leased" and i.lease_expired}
        repaired = self._run(self.store.repair_expired_leases(100, threshold_seconds=THRESHOLD))
        assert {r.outbox_id for r in repaired} == expected  # never a live lease
        self.env.events["zombie repaired"] += len(repaired)
        for r in repaired:
            item = self.by_id[r.outbox_id]
            assert item.token is not None
            item.history.append("ZOMBIE_REQUEUE")
            item.last_attempt_no += 1
            assert r.attempt_no == item.last_attempt_no
            item.stale_tokens.append(item.token)
            item.token = item.worker = None
            item.lease_expired = False
            item.needs_lookup = True
            item.maybe_executed = True  # the dead worker's call may have gone through
            item.status = "scheduled"  # the lookup waits the settle time

    @rule()
    def time_passes(self) -> None:
        """Every backoff and settle time runs out (in the database)."""
        scheduled = [i for i in self.items if i.status == "scheduled"]
        if scheduled:
            self._run(make_due(self.admin_dsn, *(i.outbox_id for i in scheduled)))
        for item in scheduled:
            item.status = "due"

    @rule(pick=st.integers(0, 10**6))
    def backoff_passes(self, pick: int) -> None:
        item = self._pick(pick, lambda i: i.status == "scheduled")
        if item is None:
            return
        self._run(make_due(self.admin_dsn, item.outbox_id))
        item.status = "due"

    # -- review -------------------------------------------------------------------------------

    @rule(pick=st.integers(0, 10**6), retry=st.booleans())
    def operator_resolves(self, pick: int, retry: bool) -> None:
        """The operator asks the rail (the model) and records what it says."""
        item = self._pick(pick, lambda i: i.status == "review")
        if item is None:
            return
        executed = item.outbox_id in self.executions
        if executed:
            decision = ReviewDecision.DISPATCHED
        else:
            decision = ReviewDecision.RETRY if retry else ReviewDecision.FAILED
        outcome = self._run(self.store.resolve_review(
            item.outbox_id, decision, decided_by="model-operator", reason="rail statement",
            rail_transaction_id=self.rail_tx.get(item.outbox_id)))
        assert outcome.decision is decision
        self.env.events[f"review {decision.value}"] += 1
        if decision is ReviewDecision.RETRY:
            assert outcome.state == "PENDING"
            item.status = "due"  # still looked up first: needs_lookup stays
            return
        item.history += ["DISPATCHING", decision.value]
        item.last_attempt_no += 2
        item.status = decision.value
        assert outcome.attempt_no == item.last_attempt_no

    @rule(pick=st.integers(0, 10**6))
    def operator_resolves_item_not_under_review(self, pick: int) -> None:
        item = self._pick(pick, lambda i: i.status != "review")
        if item is None:
            return
        with pytest.raises(InvalidRequestError) as refused:
            self._run(self.store.resolve_review(
                item.outbox_id, ReviewDecision.FAILED, decided_by="model-operator",
                reason="mistaken"))
        assert refused.value.code == "NOT_UNDER_REVIEW"

    # -- cancellation ---------------------------------------------------------------------------

    @rule(pick=st.integers(0, 10**6), by_operator=st.booleans())
    def cancel(self, pick: int, by_operator: bool) -> None:
        """The participant (or an operator) cancels: allowed exactly while no attempt can have
        reached the rail (never leased now, never ambiguous) and the item has not ended."""
        item = self._pick(pick, lambda i: True)
        if item is None:
            return
        cancel = CancelStore(self.db)
        if by_operator:
            result = self._run(cancel.cancel_as_operator(
                item.outbox_id, canceled_by="model-operator", reason="model"))
        else:
            result = self._run(cancel.cancel_as_participant(
                item.participant, item.outbox_id, "model"))
        cancelable = item.status in ("due", "scheduled") and not item.needs_lookup
        if item.status == "CANCELED":
            assert result.outcome is CancelOutcome.ALREADY_CANCELED, (item, result)
            self.env.events["cancel repeated"] += 1
        elif cancelable:
            assert result.outcome is CancelOutcome.CANCELED, (item, result)
            assert item.outbox_id not in self.executions, f"{item} canceled but was paid"
            item.history.append("CANCELED")
            item.last_attempt_no += 1
            assert result.attempt_no == item.last_attempt_no
            item.status = "CANCELED"
            item.token, item.worker = None, None
            self.env.events["cancel"] += 1
        else:
            assert result.outcome is CancelOutcome.NOT_CANCELABLE, (item, result)
            self.env.events["cancel refused"] += 1

    # -- after every step ---------------------------------------------------------------------

    @invariant()
    def model_and_database_agree(self) -> None:
        self.env.steps += 1
        [state] = self._run(test_only.query_no_role(self.admin_dsn, _STATE))
        pending = {UUID(r["id"]): r for r in state["pending"] or []}
        ledger = {UUID(r["id"]): r["states"] for r in state["ledger"] or []}
        live = {i.outbox_id for i in self.items if not i.terminal}
        assert set(pending) == live, "pending set"
        assert state["items"] == len(self.items), "registry (nothing written by a refusal)"
        for item in self.items:
            assert ledger.get(item.outbox_id, []) == item.history, item
            if item.terminal:
                continue
            row = pending[item.outbox_id]
            assert row["attempt_count"] == item.attempt_count, item
            assert row["last_attempt_no"] == item.last_attempt_no, item
            assert row["needs_lookup"] == item.needs_lookup, item
            assert row["lease_token"] == (str(item.token) if item.token else None), item
            assert row["claimed_by"] == item.worker, item
            assert row["review"] == (item.status == "review"), item
            if item.status in ("due", "scheduled"):
                assert row["due"] == (item.status == "due"), item
        for item in self.items:
            # Never FAILED once an attempt may have executed; never FAILED when it was paid.
            if item.status == "FAILED":
                assert item.outbox_id not in self.executions, f"{item} failed but was paid"
            if item.failed_by_worker:
                assert not item.maybe_executed, f"{item} failed by a worker after ambiguity"
            if item.status == "DISPATCHED":
                assert self.executions.get(item.outbox_id) == 1, item
            if item.status == "CANCELED":
                assert item.outbox_id not in self.executions, f"{item} canceled but was paid"
        assert all(n == 1 for n in self.executions.values())
        self._run(check_invariants(self.db, self.admin_dsn))


async def _copy_template(env: Environment, name: str) -> str:
    for _ in range(50):
        try:
            return await test_only.create_database(env.server_admin_dsn, name,
                                                   template=env.template)
        except SymphonyError as exc:
            # 55006: someone (autovacuum) is connected to the template for a moment.
            if exc.sqlstate != "55006":
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("the template database stayed in use")


_STATE = """
SELECT
  (SELECT json_agg(json_build_object(
        'id', outbox_id, 'attempt_count', attempt_count, 'last_attempt_no', last_attempt_no,
        'needs_lookup', needs_lookup, 'lease_token', lease_token, 'claimed_by', claimed_by,
        'review', review_reason IS NOT NULL, 'due', next_attempt_at <= now()))
     FROM symphony.payment_outbox_pending) AS pending,
  (SELECT json_agg(json_build_object('id', outbox_id, 'states', states)) FROM (
      SELECT outbox_id, array_agg(state::text ORDER BY attempt_no) AS states
        FROM symphony.payment_outbox_attempts GROUP BY outbox_id) x) AS ledger,
  (SELECT count(*) FROM symphony.payment_instruction_registry) AS items
"""


@pytest.fixture(scope="module")
def model_environment(
    make_database: DatabaseFactory, server_admin_dsn: str, symphony_home: Path
) -> Environment:
    """A migrated template database with the model's retry policy; nobody stays connected."""
    settings_ = make_database()
    admin = admin_dsn_of(settings_)
    asyncio.run(test_only.query_no_role(
        admin,
        "UPDATE symphony.outbox_retry_policy SET max_attempts = %(max)s, "
        "backoff_base_ms = %(hour)s, backoff_max_ms = %(day)s, ambiguous_settle_ms = %(hour)s, "
        "zombie_threshold_seconds = %(threshold)s",
        {"max": MAX_ATTEMPTS, "hour": HOUR_MS, "day": 24 * HOUR_MS, "threshold": THRESHOLD}))
    template = str(conninfo_to_dict(admin)["dbname"])
    return Environment(server_admin_dsn, template, symphony_home)


def test_outbox_agrees_with_its_model(model_environment: Environment) -> None:
    started = time.monotonic()
    run_state_machine_as_test(lambda: OutboxMachine(model_environment),
                              settings=MODEL_SETTINGS)
    elapsed = time.monotonic() - started
    # Shown with -s / in the soak log: the numbers docs/fault-report.md quotes.
    print(f"\nmodel check: {model_environment.runs} runs, {model_environment.steps} checked "
          f"steps, {elapsed:.1f}s (max_examples={EXAMPLES}, stateful_step_count={STEPS})")
    print("events: " + ", ".join(f"{k} {v}" for k, v in sorted(model_environment.events.items())))
