"""Retry budget (Finagle and Linkerd semantics), sans-I/O.

Every request deposits `ratio` of a token, every retry withdraws one; both
expire after `window`. A reserve of `min_per_second * window` tokens is always
there, so a quiet target can still retry. Time is cut into slices so deposits
and withdrawals are O(1): a slice that leaves the window is subtracted from a
running sum, never rescanned.
"""

from __future__ import annotations

import math

SLICES = 10


class RetryBudget:
    """Tokens for retries over a sliding window of `SLICES` slices."""

    def __init__(self, ratio: float, min_per_second: float, window: float) -> None:
        self.ratio = ratio
        self.reserve = min_per_second * window
        self._width = window / SLICES
        self._slots = [0.0] * SLICES
        self._sum = 0.0
        self._current = 0  # absolute index of the newest slice

    def deposit(self, now: float) -> None:
        """A request was made."""
        self._add(now, self.ratio)

    def try_withdraw(self, now: float) -> bool:
        """Take one token for a retry; False (and nothing taken) when the budget is spent."""
        self._advance(now)
        if self.reserve + self._sum - 1.0 < -1e-9:
            return False
        self._add(now, -1.0)
        return True

    def balance(self, now: float) -> float:
        """Retries available now."""
        self._advance(now)
        return max(0.0, self.reserve + self._sum)

    def _add(self, now: float, amount: float) -> None:
        self._advance(now)
        self._slots[self._current % SLICES] += amount
        self._sum += amount

    def _advance(self, now: float) -> None:
        index = math.floor(now / self._width)
        if index <= self._current:
            return
        for expired in range(max(self._current + 1, index - SLICES + 1), index + 1):
            slot = expired % SLICES
            self._sum -= self._slots[slot]
            self._slots[slot] = 0.0
        self._current = index
