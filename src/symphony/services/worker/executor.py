"""The executor worker: claims due items, sends them to the rail, records the outcomes.

One cycle (`run_once`) is: claim one batch, dispatch its items with bounded concurrency, and
record the outcomes with `complete_outbox_batch` as the calls finish, in small groups (one
statement per group of up to 64, written at most 5 ms after its first outcome), so a slow call
holds back only itself. Should that statement be refused
(an answer the database cannot store, say), the outcomes are recorded one by one, and an
outcome refused on its own is recorded once more with its texts escaped to plain ASCII, so one
bad item never keeps its neighbours, which the rail executed, from being recorded. The running loop (`start`) lets
cycles overlap, each claiming no more than the free dispatch capacity, so one slow rail call
delays only its own batch's completion, never the claiming of new work. The database does the rest: it
fences stale leases (I9), turns a retry past the policy's limit into FAILED, and schedules the
backoff.

How a rail answer becomes an outcome:

    SUCCESS                    -> DISPATCHED with the rail's transaction id
    RETRYABLE                  -> RETRYABLE (the rail certainly did not execute)
    AMBIGUOUS (timeout, ...)   -> RETRYABLE, ambiguous: the next attempt asks the rail first
    TERMINAL                   -> FAILED with the rail's code
    malformed payload          -> FAILED with INVALID_PAYLOAD, and the rail is never called

An item whose previous attempt ended ambiguously (a timeout, or a zombie requeue after its
worker died) is looked up before anything else (I10): EXECUTED records DISPATCHED without a
second send, NOT_FOUND sends, UNKNOWN retries later rather than risk paying twice. For such an
item the database turns any FAILED the worker reports into a retry that is looked up again
(the earlier call may still land), and after the retry ceiling it goes to review.

Stopping: no new claims; dispatches in flight get `shutdown_grace_seconds` to finish and are
recorded; whatever still runs after that is cancelled and left leased, so the zombie repair
requeues it for a lookup. An item this worker did not finish is never completed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from symphony.db import PENDING_CHANNEL, Role, SymphonyError, TransientDatabaseError
from symphony.outbox import ClaimedItem, Completion, CompletionResult, OutboxStore, Outcome
from symphony.rails import DispatchOutcome, DispatchResult, LookupStatus, RailClient
from symphony.rails.client import (
    MAX_CODE_LENGTH,
    MAX_DETAIL_LENGTH,
    MAX_TRANSACTION_ID_LENGTH,
    storable_text,
)
from symphony.service import LoopService
from symphony.services.worker.config import (
    CALL_BOUND_FACTOR,
    CALL_BOUND_SLACK_SECONDS,
    WorkerConfig,
    lease_margin_seconds,
)
from symphony.services.worker.metric import WorkerMetrics

# The same rules `enqueue_payment_outbox` enforces; checked again so that whatever reached the
# table by another road is never sent.
_AMOUNT: Final = re.compile(r"[0-9]{1,15}(\.[0-9]{1,8})?")
_CURRENCY: Final = re.compile(r"[A-Z]{3}")
_MAX_DESTINATION: Final = 256

# Slack on top of the client's own timeout handling (it may take up to twice `timeout` to give
# up); our bound only catches a client that never returns.
_OUTER_TIMEOUT_FACTOR: Final = CALL_BOUND_FACTOR
_OUTER_TIMEOUT_SLACK: Final = CALL_BOUND_SLACK_SECONDS

_LISTEN_WAIT_SECONDS: Final = 30.0
_LISTEN_BACKOFF_FIRST: Final = 0.5
_LISTEN_BACKOFF_MAX: Final = 30.0
# Outcomes are recorded as the rail calls finish, in groups of at most this many, written at
# the latest this long after the group's first outcome (see _settle_and_record).
_COMPLETION_GROUP_MAX: Final = 64
_COMPLETION_GROUP_WAIT_SECONDS: Final = 0.005
# Time the final completion statement gets after the grace period ran out.
_COMPLETION_SLACK_SECONDS: Final = 15.0
# Backoff of a completion retried while the database is unreachable or busy (lock and
# statement timeouts).
_RECORD_RETRY_FIRST: Final = 0.2
_RECORD_RETRY_MAX: Final = 5.0


def payload_problem(payload: Mapping[str, Any]) -> str | None:
    """Why `payload` must not be sent, or None when it looks like a payment."""
    amount = payload.get("amount")
    if not isinstance(amount, str):
        return "payload.amount is missing or not a decimal string"
    text = amount
    if _AMOUNT.fullmatch(text) is None or Decimal(text) <= 0:
        return "payload.amount must be a positive decimal with at most 8 decimals"
    currency = payload.get("currency")
    if not isinstance(currency, str) or _CURRENCY.fullmatch(currency) is None:
        return "payload.currency must be a 3-letter ISO 4217 code"
    destination = payload.get("destination")
    if not isinstance(destination, str) or not 1 <= len(destination) <= _MAX_DESTINATION:
        return f"payload.destination must be a string of 1-{_MAX_DESTINATION} characters"
    return None


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle did.

    claimed: items leased. dispatched / retried / failed: items recorded in that state (as the
    database decided: a retry past the limit counts as failed). fenced: completions refused
    because the lease was lost meanwhile. looked_up: rail lookups made. skipped_send: items
    recorded DISPATCHED from a lookup, without a second send. abandoned: items still in flight
    when the grace period ran out, left leased for the repair. unrecorded: outcomes the
    database refused even escaped, left leased for the repair (and its lookup).
    """

    claimed: int = 0
    dispatched: int = 0
    retried: int = 0
    failed: int = 0
    fenced: int = 0
    looked_up: int = 0
    skipped_send: int = 0
    abandoned: int = 0
    unrecorded: int = 0
    batch_full: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Decision:
    completion: Completion
    looked_up: bool = False
    skipped_send: bool = False


class ExecutorWorker(LoopService[CycleResult]):
    """Claims, dispatches and completes outbox items; see the module docstring."""

    name = "executor"

    def __init__(
        self,
        store: OutboxStore,
        rail: RailClient,
        config: WorkerConfig,
        *,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        super().__init__(config.poll_interval_seconds)
        self.store = store
        self.rail = rail
        self.config = config
        self.metrics = metrics or WorkerMetrics()
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._stop_requested = asyncio.Event()
        self._grace_deadline: float | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._items_in_flight = 0
        self.listening = False
        # When the last cycle ended (wall clock, for the heartbeat; set once per cycle).
        self.last_cycle_at: datetime | None = None

    @property
    def items_in_flight(self) -> int:
        """Items claimed by this worker and not yet recorded."""
        return self._items_in_flight

    def _context(self, outbox_id: object) -> dict[str, str]:
        """The log context of a line about one item (see symphony.log)."""
        return {"outbox_id": str(outbox_id), "worker_id": self.config.worker_id}

    # -- the loop -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start claiming (and listening for new work); a second call does nothing."""
        if self.running:
            return
        self._stop_requested = asyncio.Event()
        self._grace_deadline = None
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - the base signature
        """Stop claiming; let in-flight dispatches finish within the grace period and record
        them. A repeated call does nothing. `timeout` overrides the grace period."""
        task, self._task = self._task, None
        if task is None:
            return
        grace = self.config.shutdown_grace_seconds if timeout is None else timeout
        self.request_stop(grace)
        try:
            # The cycle itself enforces the grace period; this outer bound only catches a
            # completion statement that hangs.
            await asyncio.wait_for(asyncio.shield(task), grace + _COMPLETION_SLACK_SECONDS)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def request_stop(self, grace: float | None = None) -> None:
        """Ask the worker to stop claiming; in-flight work gets `grace` seconds from now."""
        if self._stop_requested.is_set():
            return
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        self._grace_deadline = asyncio.get_running_loop().time() + max(grace, 0.0)
        self._stop_requested.set()
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    async def _run(self) -> None:
        """Start a cycle whenever there is capacity and reason to look for work.

        Cycles overlap: a slow rail call holds its own slot, not the whole worker. A new cycle
        claims at most the free capacity (`max_concurrency` minus items in flight), so nothing
        sits leased without a slot to dispatch it. The next cycle starts at once when the last
        claim was full, else on a notification, when a cycle ends, or after the poll interval.
        """
        self._listener_task = asyncio.create_task(self._listen(), name=f"{self.name}-listener")
        cycles: set[asyncio.Task[CycleResult]] = set()
        try:
            while not self._stop_requested.is_set():
                # Cleared before claiming, so a notification that arrives meanwhile is kept.
                self._wake.clear()
                free = self.config.max_concurrency - self._items_in_flight
                if free > 0:
                    claimed: asyncio.Future[tuple[int, int]] = (
                        asyncio.get_running_loop().create_future()
                    )
                    cycle = asyncio.create_task(
                        self._cycle(min(self.config.batch_size, free), claimed),
                        name=f"{self.name}-cycle",
                    )
                    cycles.add(cycle)
                    cycle.add_done_callback(cycles.discard)
                    try:
                        count, limit = await claimed
                    except Exception:
                        count, limit = 0, 1  # the cycle logged it; back off to the poll
                    if count >= limit and not self._stop_requested.is_set():
                        continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
            # Stopping: each cycle drains within the grace period on its own.
            await asyncio.gather(*cycles, return_exceptions=True)
        finally:
            for cycle in cycles:
                cycle.cancel()
            await asyncio.gather(*cycles, return_exceptions=True)
            listener, self._listener_task = self._listener_task, None
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def _cycle(
        self, limit: int, claimed: asyncio.Future[tuple[int, int]]
    ) -> CycleResult:
        try:
            result = await self._claim_and_dispatch(limit, claimed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not claimed.done():
                claimed.set_exception(exc)
            self.failures += 1
            self.metrics.cycle_failures.inc()
            self.log.exception("worker cycle failed; retrying in at most %.1fs", self.interval)
            return CycleResult()
        finally:
            if not claimed.done():
                # Never leave the loop waiting on a cycle that ended before it claimed.
                claimed.set_result((0, limit))
        self.last_result = result
        self.cycles += 1
        self.last_cycle_at = datetime.now(UTC)
        if result.claimed:
            # Capacity came free: look for more work now rather than at the next poll.
            self.wake()
        return result

    async def _listen(self) -> None:
        """Wake the loop on every notification; reconnect with backoff when the connection
        breaks. The polling interval covers the gaps."""
        backoff = _LISTEN_BACKOFF_FIRST
        while True:
            try:
                async with self.store.db.listen(Role.EXECUTOR, PENDING_CHANNEL) as listener:
                    self.listening = True
                    backoff = _LISTEN_BACKOFF_FIRST
                    # Work may have arrived while nobody listened.
                    self.wake()
                    while True:
                        if await listener.wait(_LISTEN_WAIT_SECONDS):
                            self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning(
                    "listening for new work failed (%s); polling every %.1fs, reconnecting in "
                    "%.1fs", exc, self.interval, backoff,
                )
            finally:
                self.listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _LISTEN_BACKOFF_MAX)

    # -- one cycle ----------------------------------------------------------------------------

    async def run_once(self) -> CycleResult:
        """Claim one batch, dispatch it, and record the outcomes in one statement.

        The batch is no larger than the concurrency: a leased item never waits for a free
        slot, so its lease covers only its own calls.
        """
        limit = min(self.config.batch_size, self.config.max_concurrency)
        result = await self._claim_and_dispatch(limit, None)
        self.last_cycle_at = datetime.now(UTC)
        return result

    async def _claim_and_dispatch(
        self, limit: int, claimed: asyncio.Future[tuple[int, int]] | None
    ) -> CycleResult:
        if self._stop_requested.is_set():
            if claimed is not None:
                claimed.set_result((0, limit))
            return CycleResult()
        items = await self._claim(limit)
        if claimed is not None:
            claimed.set_result((len(items), limit))
        if not items:
            return CycleResult()
        self.metrics.claimed.inc(len(items))
        self._items_in_flight += len(items)
        released = [0]  # slots given back as their outcomes are recorded
        # Outcomes may wait for the database until shortly before the first lease ends.
        deadline = min(i.lease_expires_at for i in items) - timedelta(
            seconds=lease_margin_seconds(self.config.lease_seconds))
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(self._decide(item), name=f"dispatch-{item.reference}")
                        for item in items
                    ]
                    decisions, results = await self._settle_and_record(tasks, released,
                                                                       deadline)
            except BaseExceptionGroup as failed:
                # Recording runs inside the group, which wraps what ended the cycle (say, the
                # database lost for longer than the leases allow): raise that itself.
                if len(failed.exceptions) == 1:
                    raise failed.exceptions[0] from None
                raise
            abandoned = len(items) - len(decisions)
            if abandoned:
                self.log.warning(
                    "%d item(s) still in flight after the shutdown grace period: left leased "
                    "for the zombie repair", abandoned,
                )
        finally:
            self._items_in_flight -= len(items) - released[0]
        result = self._tally(items, decisions, results, abandoned, limit)
        self.log.debug("cycle: %s", result)
        return result

    async def _claim(self, limit: int) -> list[ClaimedItem]:
        # Without a bucket range the store is called exactly as before the ranges existed
        # (stores that wrap it keep working); with one, every call names the range.
        if self.config.buckets is None:
            return await self.store.claim(self.config.worker_id, limit, self.config.lease_seconds)
        return await self.store.claim(self.config.worker_id, limit, self.config.lease_seconds,
                                      buckets=self.config.buckets)

    async def _complete(self, completions: Sequence[Completion]) -> list[CompletionResult]:
        if self.config.buckets is None:
            return await self.store.complete_batch(completions)
        return await self.store.complete_batch(completions, buckets=self.config.buckets)

    async def _settle_and_record(
        self, tasks: Sequence[asyncio.Task[_Decision]], released: list[int],
        record_deadline: datetime | None = None,
    ) -> tuple[list[_Decision], list[CompletionResult]]:
        """Record outcomes as the calls finish, in small groups: a group is written when it
        holds `_COMPLETION_GROUP_MAX` outcomes, when its first outcome has waited
        `_COMPLETION_GROUP_WAIT_SECONDS`, or when no call is left. One slow rail call thus
        holds back only itself, never its batch's finished items (whose completions would
        otherwise wait for it, their leases running). Once a stop is requested, calls still
        running get the grace period, then are cancelled and left leased for the repair.
        A recorded group gives its slots back at once (`released`), and the loop may claim
        for them while slower calls of this cycle still run. `record_deadline` bounds how long a
        group may wait for an unreachable database (see `_record`)."""
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[Any]] = set(tasks)
        decisions: list[_Decision] = []
        results: list[CompletionResult] = []
        group: list[_Decision] = []
        first_at: float | None = None
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            while pending:
                timeout: float | None = None
                if first_at is not None:
                    timeout = max(0.0, first_at + _COMPLETION_GROUP_WAIT_SECONDS - loop.time())
                if stop.done():
                    deadline = self._grace_deadline or loop.time()
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    timeout = left if timeout is None else min(timeout, left)
                    waiting = pending
                else:
                    waiting = pending | {stop}
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is stop:
                        continue
                    pending.discard(task)
                    decision = task.result()
                    decisions.append(decision)
                    group.append(decision)
                    if first_at is None:
                        first_at = loop.time()
                due = first_at is not None and (
                    loop.time() - first_at >= _COMPLETION_GROUP_WAIT_SECONDS)
                if group and (len(group) >= _COMPLETION_GROUP_MAX or not pending or due):
                    results.extend(await self._record([d.completion for d in group], record_deadline))
                    if pending:
                        self._items_in_flight -= len(group)
                        released[0] += len(group)
                        self.wake()
                    group, first_at = [], None
        finally:
            stop.cancel()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if group:
            results.extend(await self._record([d.completion for d in group], record_deadline))
        return decisions, results

    async def _record(
        self, completions: Sequence[Completion], deadline: datetime | None = None
    ) -> list[CompletionResult]:
        """Record the outcomes in one statement; if it is refused, one by one (see the module
        docstring). A stale lease never refuses the statement: it comes back fenced.

        While the database is unreachable (a restart, a failover) or the statement is
        cancelled for its lock or statement timeout (a long ledger checkpoint, a migration or
        an operator's statement holding a lock the ledger insert needs), the statement is
        retried with backoff until `deadline` (shortly before the leases end): the rail's
        answers are known here and nowhere else, and giving up would leave the items leased
        until the zombie repair, and a lookup, settle them a lease later. Such a failure wrote
        nothing; a retry after a commit whose answer was lost comes back fenced (the lease is
        gone), never recorded twice.
        """
        if not completions:
            return []
        try:
            return await self._complete_while_reachable(completions, deadline)
        except TransientDatabaseError:
            raise  # nothing item by item would fare better; the repair covers the leases
        except SymphonyError as exc:
            self.log.warning(
                "recording %d outcome(s) in one statement was refused [%s, incident %s]; "
                "recording them one by one", len(completions), exc.code, exc.incident_id,
            )
        results: list[CompletionResult] = []
        for completion in completions:
            results.extend(await self._record_one(completion, deadline))
        return results

    async def _complete_while_reachable(
        self, completions: Sequence[Completion], deadline: datetime | None
    ) -> list[CompletionResult]:
        delay = _RECORD_RETRY_FIRST
        while True:
            try:
                return await self._complete(completions)
            except TransientDatabaseError as exc:
                now = datetime.now(UTC)
                if deadline is None or now + timedelta(seconds=delay) >= deadline or (
                    self._grace_deadline is not None
                    and asyncio.get_running_loop().time() + delay >= self._grace_deadline
                ):
                    raise
                self.log.warning(
                    "recording %d outcome(s) failed [%s, incident %s]; retrying in %.1fs "
                    "(until %s, shortly before the leases end)", len(completions), exc.code,
                    exc.incident_id, delay, deadline.isoformat(),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECORD_RETRY_MAX)

    async def _record_one(
        self, completion: Completion, deadline: datetime | None = None
    ) -> list[CompletionResult]:
        for attempt in (completion, _escaped(completion)):
            try:
                return await self._complete_while_reachable([attempt], deadline)
            except TransientDatabaseError:
                raise
            except SymphonyError as exc:
                self.log.error(
                    "recording the outcome of %s was refused [%s, incident %s]",
                    completion.outbox_id, exc.code, exc.incident_id,
                    extra=self._context(completion.outbox_id),
                )
        self.log.error(
            "the outcome %s of %s could not be recorded: left leased for the zombie repair, "
            "whose lookup will settle it", completion.outcome.value, completion.outbox_id,
            extra=self._context(completion.outbox_id),
        )
        return []

    def _tally(
        self,
        items: Sequence[ClaimedItem],
        decisions: Sequence[_Decision],
        results: Sequence[CompletionResult],
        abandoned: int,
        limit: int,
    ) -> CycleResult:
        counts = {"DISPATCHED": 0, "RETRYABLE": 0, "FAILED": 0}
        fenced = 0
        unrecorded = len(decisions) - len(results)
        for result in results:
            if result.fenced:
                fenced += 1
                self.log.warning(
                    "completion of %s refused: the lease was lost (repaired or reclaimed); "
                    "the item belongs to its new holder now", result.outbox_id,
                    extra=self._context(result.outbox_id),
                )
            elif result.state in counts:
                counts[result.state] += 1
        m = self.metrics
        m.dispatched.inc(counts["DISPATCHED"])
        m.retried.inc(counts["RETRYABLE"])
        m.failed.inc(counts["FAILED"])
        m.fenced.inc(fenced)
        looked_up = sum(d.looked_up for d in decisions)
        skipped = sum(d.skipped_send for d in decisions)
        m.lookups.inc(looked_up)
        m.skipped_sends.inc(skipped)
        return CycleResult(
            claimed=len(items),
            dispatched=counts["DISPATCHED"],
            retried=counts["RETRYABLE"],
            failed=counts["FAILED"],
            fenced=fenced,
            looked_up=looked_up,
            skipped_send=skipped,
            abandoned=abandoned,
            unrecorded=unrecorded,
            batch_full=len(items) >= limit,
        )

    # -- one item -----------------------------------------------------------------------------

    async def _decide(self, item: ClaimedItem) -> _Decision:
        async with self._slots:
            looked_up = False
            # First the lookup: whatever this worker thinks of the item now, an earlier
            # attempt may have been executed, and only the rail can say.
            if item.needs_lookup and self.rail.supports_lookup:
                looked_up = True
                found = await self._lookup(item)
                if found is not None:
                    return _Decision(found, looked_up=True,
                                     skipped_send=found.outcome is Outcome.DISPATCHED)
            problem = payload_problem(item.payload)
            if problem is not None:
                # Never sent. After an ambiguous attempt the database keeps it open instead.
                self.log.error("not sending %s: %s", item.reference, problem,
                               extra=self._context(item.outbox_id))
                return _Decision(_complete(item, Outcome.FAILED, "INVALID_PAYLOAD", problem),
                                 looked_up=looked_up)
            result = await self._dispatch(item)
            return _Decision(_classify(item, result), looked_up=looked_up)

    async def _lookup(self, item: ClaimedItem) -> Completion | None:
        """The completion a lookup settles, or None when the item should be sent."""
        timeout = self.config.lookup_timeout_seconds
        try:
            async with asyncio.timeout(_outer_bound(timeout)):
                answer = await self.rail.lookup(item.reference, timeout=timeout)
        except TimeoutError:
            return _complete(item, Outcome.RETRYABLE, "LOOKUP_TIMEOUT",
                             "the rail did not answer the lookup in time", ambiguous=True)
        except Exception as exc:
            self.log.warning("lookup of %s raised %s", item.reference, type(exc).__name__,
                             extra=self._context(item.outbox_id))
            return _complete(item, Outcome.RETRYABLE, "LOOKUP_FAILED",
                             f"lookup raised {type(exc).__name__}", ambiguous=True)
        if answer.status is LookupStatus.EXECUTED:
            self.log.info("%s was already executed by the rail: recorded without a second send",
                          item.reference, extra=self._context(item.outbox_id))
            return _complete(item, Outcome.DISPATCHED, None, "confirmed by lookup",
                             rail_transaction_id=answer.rail_transaction_id)
        if answer.status is LookupStatus.NOT_FOUND:
            return None
        # Neither yes nor no: sending could pay twice, so ask again on the next attempt.
        return _complete(item, Outcome.RETRYABLE, "LOOKUP_UNKNOWN", answer.detail,
                         ambiguous=True)

    async def _dispatch(self, item: ClaimedItem) -> DispatchResult:
        timeout = self.config.dispatch_timeout_seconds
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            async with asyncio.timeout(_outer_bound(timeout)):
                return await self.rail.dispatch(
                    item.reference, rail_type=item.rail_type, payload=item.payload,
                    timeout=timeout,
                )
        except TimeoutError:
            return DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_TIMEOUT",
                                  f"no answer within {_outer_bound(timeout):g}s")
        except Exception as exc:
            # The request may have left before the client failed: treat it as ambiguous.
            self.log.warning("dispatch of %s raised %s", item.reference, type(exc).__name__,
                             extra=self._context(item.outbox_id))
            return DispatchResult(DispatchOutcome.AMBIGUOUS, "RAIL_CLIENT_ERROR",
                                  f"dispatch raised {type(exc).__name__}")
        finally:
            self.metrics.in_flight.dec()
            self.metrics.dispatch_seconds.observe(time.perf_counter() - started)


def _outer_bound(timeout: float) -> float:
    return timeout * _OUTER_TIMEOUT_FACTOR + _OUTER_TIMEOUT_SLACK


def _complete(
    item: ClaimedItem,
    outcome: Outcome,
    code: str | None,
    detail: str | None,
    *,
    ambiguous: bool = False,
    rail_transaction_id: str | None = None,
) -> Completion:
    return Completion(
        outbox_id=item.outbox_id,
        lease_token=item.lease_token,
        outcome=outcome,
        error_code=code,
        error_detail=detail,
        ambiguous=ambiguous,
        rail_transaction_id=rail_transaction_id,
    )


def _escaped(completion: Completion) -> Completion:
    """The same outcome with every text as plain printable ASCII (non-ASCII as escapes): the
    last resort for an answer the database refused as it was."""

    def plain(text: str | None, limit: int) -> str | None:
        if text is None:
            return None
        return storable_text(text.encode("ascii", "backslashreplace").decode("ascii"), limit)

    return replace(
        completion,
        error_code=plain(completion.error_code, MAX_CODE_LENGTH),
        error_detail=plain(completion.error_detail, MAX_DETAIL_LENGTH),
        rail_transaction_id=plain(completion.rail_transaction_id, MAX_TRANSACTION_ID_LENGTH),
    )


def _classify(item: ClaimedItem, result: DispatchResult) -> Completion:
    match result.outcome:
        case DispatchOutcome.SUCCESS:
            return _complete(item, Outcome.DISPATCHED, None, result.detail,
                             rail_transaction_id=result.rail_transaction_id)
        case DispatchOutcome.RETRYABLE:
            return _complete(item, Outcome.RETRYABLE, result.code or "RAIL_RETRYABLE",
                             result.detail)
        case DispatchOutcome.AMBIGUOUS:
            return _complete(item, Outcome.RETRYABLE, result.code or "RAIL_AMBIGUOUS",
                             result.detail, ambiguous=True)
        case DispatchOutcome.TERMINAL:
            return _complete(item, Outcome.FAILED, result.code or "RAIL_DECLINED",
                             result.detail)
    # An outcome this worker does not know: the rail may have acted, so look it up next time.
    return _complete(item, Outcome.RETRYABLE, "RAIL_UNKNOWN_OUTCOME", str(result.outcome),
                     ambiguous=True)
