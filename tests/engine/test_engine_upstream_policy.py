"""Sans-I/O policy of the engine's upstream endpoints with a fake clock: reconnect backoff,
outlier ejection, panic mode, power of two choices and re-resolution merges."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from sidecar.engine.endpoints import (
    EJECTED,
    FAILING,
    IDLE,
    READY,
    Endpoint,
    EndpointPolicy,
    candidates,
    merge,
    power_of_two,
)

POLICY = EndpointPolicy(reconnect_base=0.1, reconnect_max=5.0, eject_after=3, ejection=30.0,
                        max_ejection=75.0)


def always(_: Endpoint) -> bool:
    return True


@given(st.integers(min_value=1, max_value=10_000), st.integers())
def test_backoff_delay_is_never_zero_and_never_above_max(failures: int, seed: int) -> None:
    delay = POLICY.delay(failures, random.Random(seed))
    ceiling = min(5.0, 0.1 * 2 ** min(failures - 1, 62))
    assert ceiling / 2 <= delay <= ceiling


def test_backoff_grows_exponentially_up_to_its_bound() -> None:
    top = EndpointPolicy(reconnect_base=0.1, reconnect_max=5.0)
    rand = random.Random(0)
    below_cap = [top.delay(n, rand) for n in range(1, 7)]  # 0.1 s doubling to 3.2 s
    assert below_cap == sorted(below_cap)
    assert max(top.delay(n, rand) for n in range(7, 100)) <= 5.0


def test_a_failed_connect_waits_for_its_backoff_before_the_next() -> None:
    e = Endpoint("10.0.0.1:1")
    assert e.may_connect(0.0)
    e.connect_failed(100.0, "connection refused", POLICY, random.Random(1))
    assert not e.may_connect(100.0)
    assert e.may_connect(e.retry_at)
    assert (e.state(100.0), e.last_error) == (FAILING, "connection refused")


def test_consecutive_failures_eject_for_longer_each_time_up_to_the_max() -> None:
    e = Endpoint("10.0.0.1:1")
    rand = random.Random(2)
    ejections = []
    for now in range(9):
        e.connect_failed(float(now), "connection refused", POLICY, rand)
        if e.ejected(float(now)):
            ejections.append(e.ejected_until - now)
            e.ejected_until = 0.0  # the ejection ended (as if time passed)
    assert ejections == [30.0, 60.0, 75.0]


def test_a_successful_connect_ends_the_streak_and_the_ejection() -> None:
    e = Endpoint("10.0.0.1:1")
    rand = random.Random(3)
    for _ in range(3):
        e.connect_failed(0.0, "connection refused", POLICY, rand)
    assert e.state(1.0) == EJECTED
    e.connect_succeeded()
    e.connections = 1
    assert (e.state(1.0), e.failures, e.last_error, e.ejections) == (READY, 0, None, 0)


def test_zero_consecutive_failures_never_ejects() -> None:
    e = Endpoint("10.0.0.1:1")
    never = EndpointPolicy(eject_after=0)
    for _ in range(20):
        e.connect_failed(0.0, "connection refused", never, random.Random(4))
    assert not e.ejected(0.0)


def test_ejected_endpoints_are_skipped_while_another_can_take_the_stream() -> None:
    a, b = Endpoint("a:1"), Endpoint("b:1")
    a.ejected_until = 10.0
    assert candidates([a, b], 5.0, always) == [b]
    assert candidates([a, b], 10.0, always) == [a, b]  # the ejection is over


def test_when_every_endpoint_is_ejected_all_are_used_again() -> None:
    a, b = Endpoint("a:1"), Endpoint("b:1")
    a.ejected_until = b.ejected_until = 10.0
    assert candidates([a, b], 5.0, always) == [a, b]


def test_endpoints_that_cannot_take_a_stream_are_never_candidates() -> None:
    a, b = Endpoint("a:1"), Endpoint("b:1")
    assert candidates([a, b], 0.0, lambda e: e is b) == [b]
    assert candidates([a, b], 0.0, lambda e: False) == []


def test_power_of_two_choices_takes_the_less_loaded_of_its_two() -> None:
    a, b = Endpoint("a:1"), Endpoint("b:1")
    a.streams, b.streams = 5, 1
    rand = random.Random(5)
    assert {power_of_two([a, b], rand).address for _ in range(50)} == {"b:1"}  # type: ignore[union-attr]
    assert power_of_two([a], rand) is a
    assert power_of_two([], rand) is None


def test_power_of_two_choices_balances_streams_over_endpoints() -> None:
    endpoints = [Endpoint(f"e{i}:1") for i in range(4)]
    rand = random.Random(6)
    for _ in range(400):
        chosen = power_of_two(endpoints, rand)
        assert chosen is not None
        chosen.streams += 1
    loads = [e.streams for e in endpoints]
    assert max(loads) - min(loads) <= 2, loads


def test_a_re_resolution_keeps_the_state_of_addresses_still_there() -> None:
    a, b = Endpoint("a:1"), Endpoint("b:1")
    a.failures = 2
    kept, removed = merge([a, b], ["c:1", "a:1", "a:1"], Endpoint)
    assert [e.address for e in kept] == ["c:1", "a:1"]
    assert kept[1] is a and a.failures == 2
    assert removed == [b]


def test_status_names_the_state_and_when_an_ejection_ends() -> None:
    e = Endpoint("a:1")
    assert e.status(0.0, 1000.0)["state"] == IDLE
    for _ in range(3):
        e.connect_failed(10.0, "connection refused", POLICY, random.Random(7))
    status = e.status(10.0, 1000.0)
    assert (status["state"], status["consecutive_failures"]) == (EJECTED, 3)
    assert (status["ejected_until"], status["ejected_for_s"]) == (1030.0, 30.0)
