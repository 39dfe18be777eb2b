"""One target's resilience policy: load shedding, breaker, retries with budget, deadlines.

The retry loop is protocol-free: an upstream adapter runs one attempt and
says what it came to (`Attempt`); this module decides whether another is made.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidecar.config import Target
from sidecar.errors import CircuitOpenError, OverloadedError, SidecarError
from sidecar.resilience.backoff import full_jitter
from sidecar.resilience.breaker import CLOSED, OPEN, Breaker
from sidecar.resilience.budget import RetryBudget

log = logging.getLogger("sidecar.resilience")


@dataclass(slots=True, init=False)
class Attempt:
    """What one try came to, as far as policy cares. (Its `__init__` is written out: the
    one `dataclass` writes stays interpreted in the compiled build; one is made per try.)"""

    ok: bool
    fault: bool  # counts against the breaker
    retryable: bool  # failed before reaching the application, or safe to repeat
    committed: bool  # the caller has seen part of the answer: never retry
    pushback: float | None  # seconds the upstream asked for; < 0: do not retry

    def __init__(self, ok: bool, fault: bool = False, retryable: bool = False,
                 committed: bool = False, pushback: float | None = None) -> None:
        self.ok = ok
        self.fault = fault
        self.retryable = retryable
        self.committed = committed
        self.pushback = pushback


@dataclass(slots=True)
class Counters:
    """Per-target event counts, cheap to read for /status and metrics."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    budget_exhausted: int = 0
    shed: int = 0
    circuit_rejected: int = 0
    faults: int = 0
    in_flight: int = 0
    last_error: str | None = None  # the last failure a caller got, never a circuit-open one
    last_error_at: float | None = None


class TargetPolicy:
    """Everything that decides how calls to one target are made; no I/O of its own."""

    def __init__(
        self,
        target: Target,
        clock: Callable[[], float] = time.monotonic,
        rand: random.Random | None = None,
        on_breaker_change: Callable[[str, str], None] | None = None,
    ) -> None:
        self.target = target
        # (server.address, server.port) for logs and spans, `${VAR}` values blanked
        # (the runtime sets it: telemetry/semconv.py `server_of`).
        self.server: tuple[str, int | None] = ("", None)
        self.counters = Counters()
        self._clock = clock
        self._rand = rand or random.Random()
        self._retry = target.retry
        self._max_in_flight = target.limits.max_in_flight
        self._on_breaker_change = on_breaker_change
        self.budget = RetryBudget(
            target.retry.budget.ratio, target.retry.budget.min_per_second,
            target.retry.budget.window,
        )
        self.breaker = Breaker(target.breaker.failures, target.breaker.reset, clock,
                               self._breaker_changed)
        self._circuit_open = (
            f"target {target.name!r}: circuit open after repeated upstream failures"
        )

    def admit(self) -> None:
        """Take an in-flight slot, or shed the call at once."""
        counters = self.counters
        if counters.in_flight >= self._max_in_flight:
            counters.shed += 1
            raise OverloadedError(
                f"target {self.target.name!r}: {counters.in_flight} calls in flight "
                f"(limits.max_in_flight)"
            )
        counters.in_flight += 1
        counters.requests += 1

    def release(self) -> None:
        self.counters.in_flight -= 1

    async def run(
        self, deadline: float, attempt: Callable[[float], Awaitable[Attempt]]
    ) -> Attempt:
        """Make attempts until one is final; `attempt(time_left)` runs one try.

        The same steps (`begin`, `start_attempt`, `end_attempt`, `retry_delay`) are public
        for callers that run their first attempt without a task (the frame proxy)."""
        self.begin()
        last: Attempt | None = None
        retries = 0
        while True:
            trial = self.start_attempt()
            if trial is None:
                if last is not None:
                    return last
                raise self.circuit_open()
            started = self._clock()
            try:
                last = await attempt(self.time_left(deadline, started))
            except BaseException:
                self.breaker.abandon(trial)
                raise
            self.end_attempt(last, trial)
            delay = self.retry_delay(retries + 1, last, deadline, started)
            if delay is None:
                return last
            retries += 1
            await asyncio.sleep(delay)

    def begin(self) -> None:
        """A call starts (after `admit`): it earns the retry budget its share."""
        self.budget.deposit(self._clock())

    def start_attempt(self) -> bool | None:
        """The breaker's leave for one more attempt: None when refused (the circuit is
        open: the last attempt's answer stands, or `circuit_open()` if there was none),
        else whether it is the half-open trial (give it back to `end_attempt`)."""
        trial = self.breaker.admit()
        if trial is None:
            self.counters.circuit_rejected += 1
            return None
        self.counters.attempts += 1
        return trial

    def circuit_open(self) -> CircuitOpenError:
        return CircuitOpenError(self._circuit_open)

    def time_left(self, deadline: float, now: float) -> float:
        """What one attempt may take: the time left, capped by `retry.per_try_timeout`."""
        remaining = max(deadline - now, 0.0)
        per_try = self._retry.per_try_timeout
        return remaining if per_try is None else min(remaining, per_try)

    def end_attempt(self, last: Attempt, trial: bool) -> None:
        self.breaker.record(last.fault, trial)
        if last.fault:
            self.counters.faults += 1

    def retry_delay(self, retry: int, last: Attempt, deadline: float,
                    started: float) -> float | None:
        """Seconds before retry number `retry` after `last` (which began at `started`),
        or None when `last` is the call's answer."""
        if last.ok or last.committed or not last.retryable:
            return None
        delay = self._retry_delay(retry, last, deadline, self._clock() - started)
        if delay is not None:
            self.counters.retries += 1
        return delay

    def _retry_delay(
        self, retry: int, last: Attempt, deadline: float, took: float
    ) -> float | None:
        """Seconds to wait before retry number `retry`, or None when none may be made."""
        if retry >= self._retry.attempts or self.breaker.state != CLOSED:
            return None
        if last.pushback is not None:
            if last.pushback < 0:
                return None
            delay = last.pushback
        else:
            delay = full_jitter(retry, self._retry.backoff.base, self._retry.backoff.max,
                                self._rand)
        per_try = self._retry.per_try_timeout
        needed = took if per_try is None else min(took, per_try)
        now = self._clock()
        if now + delay + needed > deadline:
            return None  # it could not finish in the time left
        if not self.budget.try_withdraw(now):
            self.counters.budget_exhausted += 1
            return None
        return delay

    def note_error(self, error: SidecarError | str) -> None:
        """Remember the failure a caller got. The breaker's own fail-fast refusals are
        not noted (they are counted in `circuit_rejected`), so `last_error` keeps the
        upstream fault that opened it; as text, the refusal is known by its message."""
        if isinstance(error, CircuitOpenError) or error == self._circuit_open:
            return
        self.counters.last_error = str(error)
        self.counters.last_error_at = time.time()

    def _breaker_changed(self, old: str | None, new: str) -> None:
        level = logging.WARNING if new == OPEN else logging.INFO
        log.log(level, "breaker %s", new, extra={"fields": {
            "target": self.target.name, "from": old, "to": new,
        }})
        if self._on_breaker_change is not None:
            self._on_breaker_change(self.target.name, new)
