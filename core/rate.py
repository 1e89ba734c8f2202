"""A token bucket: how often something may happen, whatever the input does.

Used for the backlog replay rate, the answers to unreadable commands and warnings about drops (one line a minute,
not one per dropped message).
"""
from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Holds up to `burst` tokens, refilled at `rate` per second; starts full."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self._clock = float(rate), float(burst), clock
        self._tokens = self.burst
        self._t = clock()

    def level(self) -> float:
        """The tokens there are now."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        return self._tokens

    def spend(self, n: float) -> None:
        self._tokens -= n

    def take(self) -> bool:
        """One token if there is one."""
        if self.level() < 1:
            return False
        self._tokens -= 1
        return True

    def wait_s(self) -> float:
        """Seconds until a token is there (0 if one is)."""
        return max(0.0, (1.0 - self.level()) / self.rate)
