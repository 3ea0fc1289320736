"""Application-level group commit for enqueue: many callers, one transaction, own answers.

A commit (a WAL flush) is the dominant cost of a one-item transaction; with one transaction per
call, 16 concurrent callers spend most of their time waiting for each other's flushes. Here a
call that arrives while `max_in_flight` batches are already committing waits for the next
batch instead, and that batch carries everything that gathered meanwhile (up to `max_batch`):
under load the batches grow by themselves, at low load a call goes alone and waits for
nobody. There is no timer: the gathering window is the time the previous batch takes to
commit (a millisecond or two), and one turn of the event loop. That turn matters: a batch's
callers are answered together and come back together (a caller's next call, an HTTP server's
next request), one event-loop turn or two after the answers; a batch started by the first of
them at once would carry that one item alone and leave the rest waiting for its commit, so the
batches alternated 1, 15, 1, 15 with 16 callers (two commits per 16 items). Started on the next
turn instead (`loop.call_soon`), the batch takes everyone runnable now: batches of 16, one
commit per 16 items, at the cost of one turn of the loop (microseconds) for a caller alone. One batch in flight measured best on a 2-core server (16
callers: 1,500 items/s with one, 957 with two, 594 with four, in one run): a second batch
in flight only halves the batches while the server's CPU, not the flush, is the limit.

Every caller is answered only after the batch holding its item committed, with its own result
or its own error (`OutboxStore.enqueue_batch` reports refusals per item, so one bad item never
fails its neighbours). A caller that is cancelled while waiting may still have its item
committed: enqueue is idempotent, so its retry gets the same item back.

The workers are woken by the pending table's NOTIFY trigger, once per batch, inside the
batch's commit. PostgreSQL serialises notifying commits (flush included), which costs nothing
here while one batch is in flight at a time. `wake_after_commit=True` sends the NOTIFY from a
transaction of its own after the batch committed instead; it measured slightly slower (a NOTIFY
gives its transaction an id, so the wake-up transaction flushes the WAL too) and stays off.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from typing import Protocol

from symphony.db import SymphonyError
from symphony.outbox.model import EnqueueResult, PaymentInstruction

DEFAULT_MAX_BATCH = 100
DEFAULT_MAX_IN_FLIGHT = 1

log = logging.getLogger("symphony.outbox")

# An instruction, its payload body (checked and serialised once, when it joined) and its caller.
_Waiter = tuple[PaymentInstruction, str, "asyncio.Future[EnqueueResult]"]


class BatchEnqueuer(Protocol):
    """What a group commit needs of the store that owns it (`OutboxStore` is one): the group
    sits below the store, so it names the calls it makes instead of the store's class."""

    def payload_body(self, instruction: PaymentInstruction) -> str: ...

    async def enqueue_or_error(
        self, instruction: PaymentInstruction, *, body: str | None = None
    ) -> EnqueueResult | SymphonyError: ...

    async def enqueue_batch(
        self, instructions: Sequence[PaymentInstruction], *, wake_after_commit: bool = False,
        bodies: Sequence[str] | None = None,
    ) -> list[EnqueueResult | SymphonyError]: ...

    async def wake_workers(self) -> None: ...


class EnqueueGroup:
    """Gathers concurrent `enqueue` calls into batches (see the module docstring)."""

    def __init__(
        self,
        store: BatchEnqueuer,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        wake_after_commit: bool = False,
    ) -> None:
        if not 1 <= max_batch <= 1000 or max_in_flight < 1:
            raise ValueError("max_batch must be 1-1000 and max_in_flight at least 1")
        self._store = store
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._wake_after_commit = wake_after_commit
        self._queue: list[_Waiter] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._waker: asyncio.Task[None] | None = None
        self._wake_again = False
        self._kick_scheduled = False

    async def submit(self, instruction: PaymentInstruction) -> EnqueueResult:
        """Enqueue one instruction in the next batch; its own result, or its own error.

        What the database cannot store at all (`check_storable`) is refused here, before the
        instruction joins a batch: in one, it would make the server refuse the whole batch.
        The payload body computed by that check goes with the instruction, so the batch
        neither checks nor serialises it again."""
        body = self._store.payload_body(instruction)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[EnqueueResult] = loop.create_future()
        self._queue.append((instruction, body, future))
        if not self._kick_scheduled:
            # Not at once: on the next turn of the event loop, once every caller that is
            # runnable now has joined (see the module docstring, "one turn").
            self._kick_scheduled = True
            loop.call_soon(self._scheduled_kick)
        # Shielded: a cancelled caller must not cancel the batch its neighbours are in.
        return await asyncio.shield(future)

    def _scheduled_kick(self) -> None:
        self._kick_scheduled = False
        self._kick()

    def _kick(self) -> None:
        while self._queue and len(self._flushes) < self._max_in_flight:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch:]
            # A context of its own: the batch is no part of any caller's transaction.
            task = asyncio.get_running_loop().create_task(
                self._flush(batch), context=contextvars.Context())
            self._flushes.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        self._kick()

    async def _flush(self, batch: list[_Waiter]) -> None:
        try:
            if len(batch) == 1 and not self._wake_after_commit:
                # Alone (no load): the one-item function is the shorter statement.
                results: list[EnqueueResult | SymphonyError] = [
                    await self._store.enqueue_or_error(batch[0][0], body=batch[0][1])]
            else:
                results = await self._store.enqueue_batch(
                    [ins for ins, _, _ in batch], wake_after_commit=self._wake_after_commit,
                    bodies=[body for _, body, _ in batch])
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else SymphonyError(
                        "the enqueue was interrupted", code="ENQUEUE_INTERRUPTED",
                        context="enqueue"))
            if not isinstance(exc, Exception):
                raise
            return
        created = False
        for (_, _, future), result in zip(batch, results, strict=True):
            created = created or (isinstance(result, EnqueueResult) and result.created)
            if future.done():
                continue
            if isinstance(result, SymphonyError):
                future.set_exception(result)
            else:
                future.set_result(result)
        if created and self._wake_after_commit:
            self._wake()

    def _wake(self) -> None:
        if self._waker is not None:
            self._wake_again = True
            return
        self._waker = asyncio.get_running_loop().create_task(
            self._wake_loop(), context=contextvars.Context())

    async def _wake_loop(self) -> None:
        try:
            while True:
                self._wake_again = False
                try:
                    await self._store.wake_workers()
                except SymphonyError:
                    log.warning("waking the workers failed; they find the new work by polling")
                if not self._wake_again:
                    return
        finally:
            self._waker = None

    async def aclose(self) -> None:
        """Wait for the batches in flight (and those still gathered) to finish."""
        while self._flushes or self._waker is not None or self._queue:
            if not self._flushes and self._waker is None:
                await asyncio.sleep(0)  # the scheduled kick starts what is gathered
                continue
            await asyncio.gather(*self._flushes, *filter(None, [self._waker]),
                                 return_exceptions=True)
