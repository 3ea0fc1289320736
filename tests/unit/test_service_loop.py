"""The service shape: start/stop tolerate repeats, a failed cycle does not kill the loop, and a
wake-up asked for during a cycle runs the next cycle at once."""

from __future__ import annotations

import asyncio

from symphony.service import LoopService


class _Counting(LoopService[int]):
    name = "counting"

    def __init__(self, *, fail_first: bool = False, wake_during: int = 0) -> None:
        super().__init__(interval=3600)  # only wake-ups may run a second cycle
        self.calls = 0
        self.fail_first = fail_first
        self.wake_during = wake_during
        self.second_cycle = asyncio.Event()

    async def run_once(self) -> int:
        self.calls += 1
        if self.calls == 2:
            self.second_cycle.set()
        if self.calls <= self.wake_during:
            self.wake()
        if self.fail_first and self.calls == 1:
            raise RuntimeError("first cycle fails")
        return self.calls


async def test_start_and_stop_tolerate_repeats() -> None:
    service = _Counting()
    await service.start()
    await service.start()
    assert service.running
    await service.stop()
    await service.stop()
    assert not service.running
    assert service.calls <= 1  # one loop ran, not two


async def test_wake_during_a_cycle_is_not_lost() -> None:
    service = _Counting(wake_during=1)
    await service.start()
    await asyncio.wait_for(service.second_cycle.wait(), 5)
    await service.stop()
    assert service.calls >= 2


async def test_failed_cycle_is_counted_and_the_loop_goes_on() -> None:
    service = _Counting(fail_first=True)
    await service.start()
    await asyncio.sleep(0)
    service.wake()
    await asyncio.wait_for(service.second_cycle.wait(), 5)
    await service.stop()
    assert service.failures == 1
    assert service.last_result is not None and service.last_result >= 2
