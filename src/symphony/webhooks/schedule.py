"""When a failed delivery is tried again: exponential backoff with jitter, about three days.

After failed attempt n (n = 1, 2, ...) the next one waits `base * factor**(n-1)` seconds, at
most `cap`, each wait spread by +-`jitter` (so deliveries that failed together do not return
together). With the defaults (5 s, x4, 12 h cap, 13 attempts, +-20%):

    attempt  1  at once
    attempt  2  5 s later          attempt  8   ~5.7 h later (cap reached at attempt 9)
    attempt  3  20 s               attempt  9-13  12 h each
    attempt  4  80 s
    attempt  5  ~5.3 min
    attempt  6  ~21 min
    attempt  7  ~85 min

13 attempts over about 2.8 days (2 d 19 h without jitter); after the 13th failure the
delivery is FAILED (an operator can replay it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    base_seconds: float = 5.0
    factor: float = 4.0
    cap_seconds: float = 12 * 3600.0
    max_attempts: int = 13
    jitter: float = 0.2
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (0 < self.base_seconds <= self.cap_seconds and self.factor >= 1
                and 1 <= self.max_attempts <= 100 and 0 <= self.jitter < 1):
            raise ValueError("retry schedule: 0 < base <= cap, factor >= 1, 1-100 attempts, "
                             "0 <= jitter < 1")

    def nominal_delay(self, failed_attempt: int) -> float:
        """The wait after failed attempt `failed_attempt`, before jitter."""
        exponent = max(0, failed_attempt - 1)
        # Capped before it can overflow: factor**exponent grows past any cap quickly.
        delay = self.base_seconds
        for _ in range(exponent):
            delay *= self.factor
            if delay >= self.cap_seconds:
                return self.cap_seconds
        return min(delay, self.cap_seconds)

    def delay_after(self, failed_attempt: int) -> float | None:
        """Seconds until the next attempt, or None when `failed_attempt` was the last."""
        if failed_attempt >= self.max_attempts:
            return None
        spread = 1.0 + self.jitter * (2.0 * self.rand() - 1.0)
        return self.nominal_delay(failed_attempt) * spread

    def total_nominal_seconds(self) -> float:
        """From the first attempt to the last, without jitter."""
        return sum(self.nominal_delay(n) for n in range(1, self.max_attempts))
