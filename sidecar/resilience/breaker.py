"""Circuit breaker: pybreaker's state machine, driven from asyncio.

pybreaker runs a synchronous function under its lock; here the upstream call
is awaited outside it, and only its outcome is fed to the state machine
(`record`), so the lock is never held across an await. Half-open lets exactly
one trial call through at a time.

Its state is mirrored here, from its listener: every attempt asks it, and pybreaker's
`current_state` is a chain of Python properties; pybreaker is called only when there is
something to change (a fault, or the first success after faults).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pybreaker

from sidecar.resilience.breaker_listener import Transitions

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


class _Fault(Exception):
    """Stands for an upstream fault inside pybreaker's accounting."""


def _fail() -> None:
    raise _Fault


def _succeed() -> None:
    return None


class Breaker:
    """One target's breaker: `admit` before an attempt, `record` its outcome after."""

    def __init__(
        self,
        failures: int,
        reset: float,
        clock: Callable[[], float],
        on_change: Callable[[str | None, str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._reset = reset
        self._on_change = on_change
        self._cb = pybreaker.CircuitBreaker(
            fail_max=failures, reset_timeout=reset, throw_new_error_on_trip=False,
            listeners=[Transitions(self._changed)],
        )
        self._state: str = CLOSED  # pybreaker's, as its listener last told
        self._faults = False  # a fault fed since the last success: its count may not be 0
        self._opened_at = 0.0
        self._trial = False
        self.changed_at = clock()
        self.transitions = 0

    @property
    def state(self) -> str:
        return self._state

    def admit(self) -> bool | None:
        """None: refused (open). Otherwise whether this attempt is the half-open trial."""
        state = self._state
        if state == CLOSED:
            return False
        if state == OPEN:
            if self._clock() - self._opened_at < self._reset:
                return None
            self._cb.half_open()
        if self._trial:
            return None
        self._trial = True
        return True

    def abandon(self, trial: bool) -> None:
        """An admitted attempt ended with no outcome (the caller went away)."""
        if trial:
            self._trial = False

    def record(self, fault: bool, trial: bool) -> None:
        """Feed one attempt's outcome; late outcomes of non-trial calls are ignored when
        the breaker has already left the closed state."""
        if trial:
            self._trial = False
        elif self._state != CLOSED:
            return
        elif not fault and not self._faults:
            return  # the common case: nothing for the state machine to change
        self._faults = fault
        if fault:
            with contextlib.suppress(_Fault, pybreaker.CircuitBreakerError):
                self._cb.call(_fail)
        else:
            self._cb.call(_succeed)

    def _changed(self, old: str | None, new: str) -> None:
        self._state = new
        if new == OPEN:
            self._opened_at = self._clock()
        self.changed_at = self._clock()
        self.transitions += 1
        if self._on_change is not None:
            self._on_change(old, new)
