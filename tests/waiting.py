"""Wait for a condition with a deadline instead of sleeping: `eventually` and its async twin.

A check is either a predicate (holds when it returns a truthy value) or an
assertion (holds when it returns None without raising). Any exception a check
raises (a failed `pytest.raises` too) means "not yet", except `GiveUp`, which
ends the wait at once. On timeout the wait fails with the check's source and
its last failure, so the test says what it waited for and what it saw last.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
# What a check raises for "not yet": any error, and pytest.raises/fail inside a check
# (pytest's Failed is a BaseException).
_NOT_YET = (Exception, pytest.fail.Exception)


class GiveUp(Exception):
    """Raised by a check when waiting longer cannot help (the process it waits on exited)."""


def eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Call `check` every `interval` s until it holds; return its result, or fail at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        failure: BaseException | None = None
        last: Any = None
        try:
            result = check()
        except GiveUp:
            raise
        except _NOT_YET as exc:
            failure = exc
        else:
            if inspect.iscoroutine(result):
                result.close()
                raise TypeError("eventually() got a coroutine; use eventually_async()")
            if result is None or result:
                return result
            last = result
        if time.monotonic() >= deadline:
            _fail(check, timeout, last, failure)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


async def eventually_async(check: Callable[[], Any], timeout: float = 10.0,
                           interval: float = 0.02) -> Any:
    """`eventually` for event-loop code: `check` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        failure: BaseException | None = None
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except GiveUp:
            raise
        except _NOT_YET as exc:
            result, failure = None, exc
        else:
            if result is None or result:
                return result
        if time.monotonic() >= deadline:
            _fail(check, timeout, result, failure)
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _fail(check: Callable[[], Any], timeout: float, result: Any,
          failure: BaseException | None) -> None:
    what = _describe(check)
    if failure is None:
        raise AssertionError(f"still false after {timeout}s: {what} (last returned {result!r})")
    raise AssertionError(
        f"still failing after {timeout}s: {what}: {type(failure).__name__}: {failure}"
    ) from failure


def _describe(check: Callable[[], Any]) -> str:
    """The lambda's source line, or the function's qualified name."""
    name = getattr(check, "__qualname__", repr(check))
    if name.endswith("<lambda>"):
        try:
            return " ".join(inspect.getsource(check).split())[:300]
        except (OSError, TypeError):
            pass
    return str(name)
