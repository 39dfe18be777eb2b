"""The endpoints of one upstream target, sans-I/O: reconnect backoff, outlier ejection and
the choice of an endpoint for a new stream.

Every method takes `now` (monotonic seconds) and returns a decision; the pool does the I/O.
- **Backoff**: after the n-th consecutive connect failure an endpoint is not tried again
  before `now + delay(n)`, `delay(n) = min(max, base * 2**(n-1))` scaled by a random factor
  in [0.5, 1] (equal jitter: never zero, never above `max`), so any number of callers cause
  one connect per interval.
- **Ejection** (Envoy's consecutive-failure outlier detection): every `eject_after`
  consecutive connect failures eject the endpoint for `ejection * k` (the k-th ejection in a
  row, at most `max_ejection`); a successful connect ends the streak and the count of
  ejections. An ejected endpoint gets no new stream while another endpoint can take it; when
  every endpoint is ejected, ejection is ignored (Envoy's panic mode) and backoff alone paces
  the connects.
- **Choice**: power of two choices on in-flight streams among the endpoints that can take a
  stream now: two picked at random, the less loaded wins.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

READY = "ready"  # has a live connection
IDLE = "idle"  # never connected, or its connections were closed without a failure
FAILING = "failing"  # its last connect failed: waiting for the backoff
EJECTED = "ejected"


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """Reconnect backoff and outlier ejection, seconds and counts; 0 `eject_after` never ejects."""

    reconnect_base: float = 0.1
    reconnect_max: float = 5.0
    eject_after: int = 5
    ejection: float = 30.0
    max_ejection: float = 300.0

    def delay(self, failures: int, rand: random.Random) -> float:
        """Seconds before the next connect after `failures` consecutive failures (>= 1)."""
        ceiling = min(self.reconnect_max, self.reconnect_base * 2.0 ** min(failures - 1, 62))
        return ceiling * rand.uniform(0.5, 1.0)


class Endpoint:
    """One address of a target: its connect streak, backoff, ejection and load."""

    __slots__ = ("address", "connections", "ejected_until", "ejections", "failures",
                 "last_error", "retry_at", "streams")

    def __init__(self, address: str) -> None:
        self.address = address
        self.failures = 0  # consecutive connect failures
        self.retry_at = 0.0  # no connect before this
        self.ejected_until = 0.0
        self.ejections = 0  # ejections in a row, for the growing ejection time
        self.last_error: str | None = None
        self.streams = 0  # in flight on its connections (kept by the connections)
        self.connections = 0  # live connections (kept by the pool)

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def may_connect(self, now: float) -> bool:
        return now >= self.retry_at

    def connect_failed(self, now: float, reason: str, policy: EndpointPolicy,
                       rand: random.Random) -> None:
        self.failures += 1
        self.last_error = reason
        self.retry_at = now + policy.delay(self.failures, rand)
        if policy.eject_after and self.failures % policy.eject_after == 0:
            self.ejections += 1
            self.ejected_until = now + min(policy.max_ejection, policy.ejection * self.ejections)

    def connect_succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.ejections = 0
        self.ejected_until = 0.0
        self.last_error = None

    def state(self, now: float) -> str:
        if self.ejected(now):
            return EJECTED
        if self.connections:
            return READY
        return FAILING if self.failures else IDLE

    def status(self, now: float, wall: float) -> dict[str, object]:
        """A JSON-ready view; `ejected_until` is wall-clock epoch seconds."""
        ejected = self.ejected(now)
        return {
            "address": self.address,
            "state": self.state(now),
            "connections": self.connections,
            "streams": self.streams,
            "consecutive_failures": self.failures,
            "ejected_until": round(wall + self.ejected_until - now, 3) if ejected else None,
            "ejected_for_s": round(self.ejected_until - now, 3) if ejected else None,
            "retry_in_s": round(self.retry_at - now, 3) if self.retry_at > now else None,
            "last_error": self.last_error,
        }


E = TypeVar("E", bound=Endpoint)


def candidates(endpoints: Sequence[E], now: float, usable: Callable[[E], bool]) -> list[E]:
    """The endpoints that may take a new stream: `usable` ones not ejected, or, when every
    usable one is ejected, all usable ones (panic mode)."""
    fit = [e for e in endpoints if usable(e)]
    kept = [e for e in fit if not e.ejected(now)]
    return kept or fit


def power_of_two(endpoints: Sequence[E], rand: random.Random) -> E | None:
    """Two endpoints at random, the one with fewer streams in flight (None if empty)."""
    n = len(endpoints)
    if n < 2:
        return endpoints[0] if n else None
    i = rand.randrange(n)
    j = rand.randrange(n - 1)
    if j >= i:
        j += 1
    a, b = endpoints[i], endpoints[j]
    return b if b.streams < a.streams else a


def merge(current: Sequence[E], addresses: Sequence[str],
          make: Callable[[str], E]) -> tuple[list[E], list[E]]:
    """A re-resolution: (the new endpoint list, keeping the state of addresses still there,
    the endpoints whose address is gone)."""
    by_address = {e.address: e for e in current}
    kept = [by_address.pop(a) if a in by_address else make(a) for a in dict.fromkeys(addresses)]
    return kept, list(by_address.values())
