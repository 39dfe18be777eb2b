"""pybreaker's listener for `Breaker`, kept out of the compiled build.

pybreaker calls its listeners with keyword arguments, which mypyc's compiled methods
mishandle (SystemError in dictobject.c); this one stays interpreted and only passes the
change on. It runs once per state change, never per call.
"""

from __future__ import annotations

from collections.abc import Callable

import pybreaker


class Transitions(pybreaker.CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, changed: Callable[[str | None, str], None]) -> None:
        self._changed = changed

    def state_change(self, cb: pybreaker.CircuitBreaker, old: object, new: object) -> None:
        self._changed(getattr(old, "name", None), new.name)  # type: ignore[attr-defined]
