"""Token buckets, sans-I/O: a listener's `rate_limit` and the engine's reset-flood guard.

`TokenBucket` is one bucket: `rate` tokens a second, at most `burst` saved, time read only
from the `now` it is given. `RateLimiter` is a listener's limit: one bucket for the whole
listener, or one per caller (a user id or a peer uid). A caller's bucket that has been idle
long enough to be full again (`burst / rate` seconds) is the same as a new one, so it is
forgotten: memory follows the callers active in the last refill period, not every caller
ever seen. A hard cap (`max_callers`) holds even when more callers than that are active:
the oldest buckets are forgotten first, and a forgotten caller starts again with a full one.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

MAX_CALLERS = 10_000  # caller buckets kept per listener, at most


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
        return self.acquire(now) == 0.0

    def acquire(self, now: float) -> float:
        """Spend one token and return 0.0; or spend nothing and return the seconds from
        `now` until a token is free. A clock going backwards refills nothing."""
        elapsed = now - self._last
        if elapsed > 0:
            tokens = self._tokens + elapsed * self._rate
            self._tokens = tokens if tokens < self._burst else self._burst
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate

    @property
    def last(self) -> float:
        """When the bucket was last refilled (its last use)."""
        return self._last


class RateLimiter:
    """A listener's rate limit: `acquire(key, now)` is 0.0 for a call that may go, else the
    seconds until the caller's next token. With `per_caller` False every key shares one
    bucket."""

    __slots__ = ("_buckets", "_burst", "_idle", "_max", "_one", "_rate", "_sweep_at")

    def __init__(self, rate: float, burst: int, per_caller: bool, now: float,
                 max_callers: int = MAX_CALLERS) -> None:
        if rate <= 0 or burst < 1 or max_callers < 1:
            raise ValueError("rate must be > 0, burst and max_callers >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._one = None if per_caller else TokenBucket(rate, burst, now)
        self._buckets: dict[Hashable, TokenBucket] = {}
        self._max = max_callers
        self._idle = burst / rate  # seconds after which an unused bucket is full again
        self._sweep_at = now + self._idle

    def acquire(self, key: Hashable, now: float) -> float:
        """Spend one of `key`'s tokens (0.0), or the seconds until one is free."""
        bucket = self._one
        if bucket is None:
            bucket = self._buckets.get(key)
            if bucket is None:
                if now >= self._sweep_at or len(self._buckets) >= self._max:
                    self._sweep(now)
                bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
        return bucket.acquire(now)

    def __len__(self) -> int:
        """Caller buckets held now."""
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        """Forget buckets that are full again; over the cap, the oldest too (down to 3/4
        of it, so a sweep is paid for by many new callers, not made for each)."""
        horizon = now - self._idle
        buckets = self._buckets
        for key in [k for k, b in buckets.items() if b.last <= horizon]:
            del buckets[key]
        if len(buckets) >= self._max:
            excess = len(buckets) - self._max * 3 // 4
            for key in list(buckets)[:excess]:
                del buckets[key]
        self._sweep_at = now + self._idle


def pushback_ms(seconds: float) -> int:
    """A wait as `grpc-retry-pushback-ms`: whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds * 1000))
