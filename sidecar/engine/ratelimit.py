"""Token bucket for peer-caused stream resets (the rapid-reset attack), sans-I/O."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved; O(1), reads time only from `now`."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token; False (and nothing spent) when the bucket is empty."""
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
