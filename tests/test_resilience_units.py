"""The sans-I/O policies with a fake clock: budget, backoff, breaker, retry loop."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config_loader import parse_config
from sidecar.errors import LimitExceededError, UpstreamUnavailableError
from sidecar.resilience.backoff import full_jitter, grpc_pushback, retry_after
from sidecar.resilience.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from sidecar.resilience.budget import SLICES, RetryBudget
from sidecar.resilience.policy import Attempt, TargetPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- budget -------------------------------------------------------------


def test_budget_grants_reserve_then_ratio_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1, window=10)
    granted = sum(budget.try_withdraw(0.0) for _ in range(100))
    assert granted == 10  # the reserve: min_per_second * window
    for _ in range(50):
        budget.deposit(0.1)
    assert sum(budget.try_withdraw(0.2) for _ in range(100)) == 10  # 0.2 * 50


def test_budget_deposits_expire_after_the_window() -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0, window=10)
    for _ in range(5):
        budget.deposit(0.0)
    assert budget.balance(5.0) == 5
    assert budget.balance(10.5) == 0
    assert not budget.try_withdraw(10.5)


def test_budget_withdrawals_expire_too() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=10)
    assert sum(budget.try_withdraw(0.0) for _ in range(10)) == 5
    assert sum(budget.try_withdraw(11.0) for _ in range(10)) == 5


events = st.lists(
    st.tuples(st.floats(min_value=0, max_value=0.5), st.booleans(), st.integers(0, 3)),
    min_size=1, max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(events, st.floats(0.0, 1.0), st.floats(0.0, 5.0), st.sampled_from([1.0, 2.0, 10.0]))
def test_budget_never_grants_more_than_the_formula(
    steps: list[tuple[float, bool, int]], ratio: float, min_per_second: float, window: float
) -> None:
    """In any stretch of (SLICES-1)/SLICES of a window, granted retries are at most
    min_per_second * window plus ratio times the requests of the window before."""
    budget = RetryBudget(ratio, min_per_second, window)
    now = 0.0
    requests: deque[float] = deque()
    grants: deque[float] = deque()
    span = window * (SLICES - 1) / SLICES
    for gap, is_request, retries in steps:
        now += gap
        if is_request:
            budget.deposit(now)
            requests.append(now)
        for _ in range(retries):
            if budget.try_withdraw(now):
                grants.append(now)
                recent = sum(1 for t in grants if t >= now - span)
                made = sum(1 for t in requests if t > now - window)
                assert recent <= min_per_second * window + ratio * made + 1e-6


# ---- backoff ------------------------------------------------------------


def test_full_jitter_stays_under_the_exponential_cap() -> None:
    rand = random.Random(7)
    for retry, cap in [(1, 0.025), (2, 0.05), (3, 0.1), (10, 1.0)]:
        delays = [full_jitter(retry, 0.025, 1.0, rand) for _ in range(500)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # jitter spans the range


@pytest.mark.parametrize(("value", "seconds"),
                         [(None, None), ("250", 0.25), ("0", 0.0), ("-1", -1.0), ("x", -1.0)])
def test_grpc_pushback(value: str | None, seconds: float | None) -> None:
    assert grpc_pushback(value) == seconds


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert retry_after("3", 0.0) == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after("soon", 0.0) is None


# ---- breaker ------------------------------------------------------------


def test_breaker_opens_after_consecutive_faults_and_half_opens_after_reset() -> None:
    clock = Clock()
    changes: list[tuple[str | None, str]] = []
    breaker = Breaker(3, 10.0, clock, lambda old, new: changes.append((old, new)))
    for _ in range(2):
        breaker.record(fault=True, trial=bool(breaker.admit()))
    breaker.record(fault=False, trial=False)  # a success resets the count
    for _ in range(3):
        assert breaker.admit() is False
        breaker.record(fault=True, trial=False)
    assert breaker.state == OPEN
    assert breaker.admit() is None
    clock.now += 10
    assert breaker.admit() is True  # the one trial
    assert breaker.state == HALF_OPEN
    assert breaker.admit() is None  # no second trial while it runs
    breaker.record(fault=False, trial=True)
    assert breaker.state == CLOSED
    assert [new for _, new in changes] == [OPEN, HALF_OPEN, CLOSED]


def test_failed_trial_reopens_for_another_reset_period() -> None:
    clock = Clock()
    breaker = Breaker(1, 5.0, clock)
    breaker.record(fault=True, trial=False)
    clock.now += 5
    assert breaker.admit() is True
    breaker.record(fault=True, trial=True)
    assert breaker.state == OPEN
    clock.now += 4.9
    assert breaker.admit() is None


def test_late_outcome_of_an_earlier_call_does_not_close_an_open_breaker() -> None:
    breaker = Breaker(1, 5.0, Clock())
    breaker.record(fault=True, trial=False)
    breaker.record(fault=False, trial=False)
    assert breaker.state == OPEN


def test_the_mirrored_state_follows_pybreaker_through_any_sequence() -> None:
    # Breaker answers from its own copy of pybreaker's state and calls pybreaker only when
    # something may change: the copy and the fault count must never drift from pybreaker's.
    rng = random.Random(7)
    clock = Clock()
    breaker = Breaker(3, 2.0, clock)
    seen = set()

    def check(breaker: Breaker) -> None:
        state = str(breaker._cb.current_state)
        assert breaker.state == state
        if state == CLOSED and breaker._cb.fail_counter:
            assert breaker._faults
        seen.add(state)

    for _ in range(5000):
        step = rng.random()
        if step < 0.1:
            clock.now += rng.choice((0.5, 1.0, 2.0))
        trial = breaker.admit()
        check(breaker)
        if trial is not None:
            breaker.record(fault=rng.random() < 0.4, trial=trial)
            check(breaker)
    assert seen == {CLOSED, OPEN, HALF_OPEN}


# ---- the retry loop -----------------------------------------------------


def _policy(clock: Clock, **target: object) -> TargetPolicy:
    config = parse_config({
        "listeners": [{"name": "a", "socket": "/tmp/a.sock"}],
        "targets": {"t": {"kind": "grpc", "address": "x:1", **target}},
    }, env={})
    return TargetPolicy(config.targets["t"], clock=clock, rand=random.Random(1))


async def test_retry_loop_stops_at_attempts() -> None:
    clock = Clock()
    policy = _policy(clock, retry={"attempts": 4, "backoff": {"base": "1ms", "max": "1ms"}})
    tries = []

    async def attempt(time_left: float) -> Attempt:
        tries.append(time_left)
        return Attempt(ok=False, fault=True, retryable=True)

    result = await policy.run(clock.now + 5, attempt)
    assert not result.ok and len(tries) == 4
    assert policy.counters.retries == 3


async def test_committed_or_non_retryable_attempts_are_final() -> None:
    clock = Clock()
    policy = _policy(clock)
    for final in (Attempt(ok=False, retryable=True, committed=True), Attempt(ok=False)):
        tries = 0

        async def attempt(time_left: float, final: Attempt = final) -> Attempt:
            nonlocal tries
            tries += 1
            return final

        await policy.run(clock.now + 5, attempt)
        assert tries == 1


async def test_open_breaker_fails_fast_without_an_attempt() -> None:
    clock = Clock()
    policy = _policy(clock, breaker={"failures": 1})

    async def attempt(time_left: float) -> Attempt:
        return Attempt(ok=False, fault=True, retryable=True)

    await policy.run(clock.now + 5, attempt)

    async def must_not_run(time_left: float) -> Attempt:
        raise AssertionError("the upstream was called with the breaker open")

    with pytest.raises(UpstreamUnavailableError, match="circuit open"):
        await policy.run(clock.now + 5, must_not_run)


def test_admit_sheds_over_max_in_flight() -> None:
    policy = _policy(Clock(), limits={"max_in_flight": 2})
    policy.admit()
    policy.admit()
    with pytest.raises(LimitExceededError, match="'t'"):
        policy.admit()
    assert policy.counters.shed == 1
    policy.release()
    policy.admit()


async def test_per_try_timeout_bounds_each_attempt() -> None:
    clock = Clock()
    policy = _policy(clock, retry={"per_try_timeout": "100ms"})
    seen = []

    async def attempt(time_left: float) -> Attempt:
        seen.append(time_left)
        return Attempt(ok=True)

    await policy.run(clock.now + 5, attempt)
    assert seen == [pytest.approx(0.1)]
