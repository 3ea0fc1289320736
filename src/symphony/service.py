"""The one shape every long-running service has.

A typed config (validated at construction), `run_once() -> Result` doing one bounded unit of
work, and a thin loop around it. `start()` and `stop()` tolerate repeats; a failed cycle is
logged and retried after the interval, never allowed to kill the loop. Tests call `run_once`
directly instead of waiting for the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

ResultT = TypeVar("ResultT")


class LoopService(ABC, Generic[ResultT]):
    """Runs `run_once` every `interval` seconds (or sooner, when `wake()` is called)."""

    name: str = "service"

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"{self.name}: interval must be positive, got {interval}")
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.log = logging.getLogger(f"symphony.{self.name}")
        self.last_result: ResultT | None = None
        self.cycles = 0
        self.failures = 0

    @abstractmethod
    async def run_once(self) -> ResultT:
        """One bounded cycle of work."""

    async def start(self) -> None:
        """Start the loop; a second call while running does nothing."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - bounds the drain
        """Ask the loop to stop after its current cycle; cancels it after `timeout`."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Run the next cycle now instead of at the end of the interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the cycle, so a wake() during the cycle (a full batch asking for
            # another) is kept for the wait below instead of being lost.
            self._wake.clear()
            try:
                self.last_result = await self.run_once()
                self.cycles += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                self.log.exception("%s cycle failed; retrying in %.1fs", self.name, self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
