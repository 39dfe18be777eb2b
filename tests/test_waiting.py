"""The polling helper every readiness wait in the tests is built on."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import GiveUp, eventually, eventually_async


def test_returns_the_predicates_value_as_soon_as_it_holds() -> None:
    calls = itertools.count(1)
    assert eventually(lambda: next(calls) >= 3 and "ready", timeout=30, interval=0.01) == "ready"
    assert next(calls) == 4  # called exactly three times: no further poll once it held


def test_an_assertion_that_passes_holds_at_once() -> None:
    calls: list[int] = []
    assert eventually(lambda: calls.append(1), timeout=30) is None
    assert calls == [1]


def test_times_out_with_the_last_errors_message() -> None:
    attempts = itertools.count(1)

    def check() -> None:
        n = next(attempts)
        assert n < 0, f"attempt {n} saw no socket"

    with pytest.raises(AssertionError, match=r"still failing after 0.2s: .*check.*saw no socket") \
            as caught:
        eventually(check, timeout=0.2, interval=0.01)
    last = int(str(caught.value).split("attempt ")[1].split()[0])
    assert last > 1  # it polled, and the message is from the last attempt, not the first
    assert isinstance(caught.value.__cause__, AssertionError)


def test_a_failed_pytest_raises_inside_a_check_means_not_yet() -> None:
    calls = itertools.count(1)

    def refused() -> None:
        with pytest.raises(ConnectionRefusedError):
            if next(calls) >= 3:
                raise ConnectionRefusedError

    eventually(refused, timeout=30, interval=0.01)
    assert next(calls) == 4


def test_a_false_predicate_times_out_naming_its_source() -> None:
    with pytest.raises(AssertionError, match=r"still false after 0.1s: .*lambda: 1 == 2"):
        eventually(lambda: 1 == 2, timeout=0.1)


def test_give_up_ends_the_wait_at_once() -> None:
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        raise GiveUp("process exited with 1")

    with pytest.raises(GiveUp, match="exited with 1"):
        eventually(check, timeout=30)
    assert calls == [1]


def test_a_coroutine_check_needs_the_async_variant() -> None:
    async def check() -> bool:
        return True

    with pytest.raises(TypeError, match="eventually_async"):
        eventually(check)


async def test_async_variant_awaits_the_check_and_reports_its_last_error() -> None:
    calls = itertools.count(1)

    async def ready() -> bool:
        return next(calls) >= 2

    assert await eventually_async(ready, timeout=30, interval=0.01) is True

    async def never() -> None:
        raise ConnectionRefusedError("nobody listening on 127.0.0.1:1")

    with pytest.raises(AssertionError, match="ConnectionRefusedError: nobody listening"):
        await eventually_async(never, timeout=0.1)
