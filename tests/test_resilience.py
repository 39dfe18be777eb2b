"""Retries, budgets, breakers, limits and deadlines over real sockets."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Daemon, Upstream, basic_config, eventually, free_port, write_config

FLAKY = "/test.Echo/Flaky"


def _config(short_dir: Path, upstream: Upstream, **target: Any) -> dict[str, Any]:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"].update(target)
    return config


def _call(d: Daemon, method: str = FLAKY, timeout: float = 5, **md: str) -> bytes:
    with d.channel() as ch:
        return ch.unary_unary(method)(b"x", metadata=list(md.items()), timeout=timeout)


def _code(d: Daemon, method: str = FLAKY, timeout: float = 5, **md: str) -> grpc.StatusCode:
    try:
        _call(d, method, timeout, **md)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_two_unavailable_then_success_is_retried_under_one_request_id(
    daemon: Daemon, upstream: Upstream
) -> None:
    assert _call(daemon, **{"fail-times": "2"}) == b"x"
    assert upstream.calls("Flaky") == 3
    assert len({s.metadata["request-id"] for s in upstream.seen}) == 1


def test_total_outage_stays_within_the_retry_budget(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(_config(
        short_dir, upstream,
        retry={"attempts": 3, "backoff": {"base": "1ms", "max": "2ms"},
               "budget": {"ratio": 0.2, "min_per_second": 1, "window": "10s"}},
        breaker={"failures": 100000}))
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    with d.channel() as ch:
        stub = ch.unary_unary(FLAKY)
        for _ in range(300):
            with pytest.raises(grpc.RpcError):
                stub(b"x", timeout=5)
    attempts = upstream.calls("Flaky")
    assert 300 < attempts <= 1.2 * 300 + 10 * 1 + 5


def test_dead_target_opens_the_breaker_then_recovers(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(_config(short_dir, upstream, breaker={"failures": 5, "reset": "1s"}))
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    with d.channel() as ch:
        stub = ch.unary_unary(FLAKY)
        for _ in range(5):
            with pytest.raises(grpc.RpcError):
                stub(b"x", timeout=5)
        seen_before = upstream.calls("Flaky")
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as err:
                stub(b"x", timeout=5)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "circuit open" in err.value.details() and "'up'" in err.value.details()
        assert upstream.calls("Flaky") == seen_before  # failing fast, upstream untouched
        health = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="up"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        upstream.outage = None
        time.sleep(1.1)  # on purpose: let the breaker's 1 s reset pass (a sleep never ends early)
        assert stub(b"back", timeout=5) == b"back"
        assert stub(b"again", timeout=5) == b"again"
    opened = [r for r in d.records() if r["body"].startswith("breaker")]
    assert [e["to"] for e in opened] == ["open", "half-open", "closed"]


def test_caller_errors_neither_retry_nor_trip_the_breaker(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(_config(short_dir, upstream, breaker={"failures": 2}))
    for _ in range(10):
        code = _code(d, **{"fail-times": "1", "fail-code": "INVALID_ARGUMENT"})
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert upstream.calls("Flaky") == 10
    assert _call(d) == b"x"


def test_retry_that_cannot_finish_before_the_deadline_is_not_made(
    daemon: Daemon, upstream: Upstream
) -> None:
    # The first attempt takes 1.2 s of a 2 s deadline: a second could not finish in time.
    with daemon.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(FLAKY)(b"x", timeout=2, metadata=[("fail-times", "100"),
                                                          ("delay-ms", "1200")])
    # The first attempt's own failure, answered before the deadline: no retry was started
    # (one would have run into the deadline and ended DEADLINE_EXCEEDED).
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "flaky failure 1"
    assert upstream.calls("Flaky") == 1


def test_max_in_flight_sheds_the_excess_at_once(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(_config(short_dir, upstream, limits={"max_in_flight": 2}))
    with d.channel() as ch, futures.ThreadPoolExecutor(10) as pool:
        stub = ch.unary_unary("/test.Echo/Hold")

        def one() -> grpc.StatusCode:
            try:
                stub(b"x", timeout=60)
            except grpc.RpcError as e:
                return e.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        calls = [pool.submit(one) for _ in range(10)]
        # Two calls are held upstream; the eight others are answered without waiting for them.
        eventually(lambda: sum(c.done() for c in calls) == 8)
        assert upstream.calls("Hold") == 2
        assert [c.result() for c in calls if c.done()] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 8
        upstream.release.set()
        codes = [c.result(timeout=10) for c in calls]
    assert codes.count(grpc.StatusCode.OK) == 2


def test_pushback_is_honoured(daemon: Daemon, upstream: Upstream) -> None:
    code = _code(daemon, **{"fail-times": "1", "pushback-ms": "-1"})
    assert code is grpc.StatusCode.UNAVAILABLE
    assert upstream.calls("Flaky") == 1
    started = time.monotonic()
    assert _call(daemon, **{"fail-times": "1", "pushback-ms": "300"}) == b"x"
    assert time.monotonic() - started >= 0.3  # a lower bound: a busy machine only adds to it
    assert upstream.calls("Flaky") == 3


def test_codes_listed_in_retry_on_are_retried(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(_config(short_dir, upstream, retry={"on": ["resource_exhausted"]}))
    assert _call(d, **{"fail-times": "2", "fail-code": "RESOURCE_EXHAUSTED"}) == b"x"
    assert upstream.calls("Flaky") == 3
    assert _code(d, **{"fail-times": "1", "fail-code": "INTERNAL"}) is grpc.StatusCode.INTERNAL
    assert upstream.calls("Flaky") == 4


def test_per_try_timeout_cuts_a_slow_attempt_and_retries(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(_config(short_dir, upstream, retry={
        "per_try_timeout": "150ms", "on": ["DEADLINE_EXCEEDED"]}))
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Hold")(b"x", timeout=30)  # Hold answers no attempt
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    attempts = upstream.seen
    assert len(attempts) == 3  # retry.attempts' default: every attempt was cut and retried
    # Each attempt's deadline was the per-try limit (grpc-timeout rounds to the microsecond).
    assert all(0 < a.time_remaining < 0.15 + 0.01 for a in attempts), attempts
    eventually(lambda: all(a.cancelled for a in attempts))


def test_stream_is_replayed_on_retry_before_any_response(
    daemon: Daemon, upstream: Upstream
) -> None:
    messages = [f"m{i}".encode() for i in range(50)]
    with daemon.channel() as ch:
        replies = list(ch.stream_stream("/test.Echo/FlakyStream")(
            iter(messages), metadata=[("fail-times", "2")], timeout=5))
    assert replies == messages
    assert upstream.received == [messages, messages, messages]


def test_stream_is_never_retried_after_the_first_response(
    daemon: Daemon, upstream: Upstream
) -> None:
    with daemon.channel() as ch:
        call = ch.unary_stream("/test.Echo/StreamThenFail")(b"one", timeout=5)
        got = []
        with pytest.raises(grpc.RpcError) as err:
            got.extend(call)
    assert got == [b"one"]
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "gone after one message"
    assert upstream.calls("StreamThenFail") == 1


def test_status_shows_breaker_and_counters(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    port = free_port()
    config = _config(short_dir, upstream, breaker={"failures": 2, "reset": "30s"})
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    d = daemon_factory(config)
    assert _call(d, **{"fail-times": "1"}) == b"x"
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    assert _code(d) is grpc.StatusCode.UNAVAILABLE
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        target = orjson.loads(r.read())["targets"]["up"]
    assert target["breaker"]["state"] == "open"
    assert target["counters"]["requests"] == 2
    assert target["counters"]["attempts"] == 4  # the second call's retry tripped it
    assert target["counters"]["retries"] == 2
    assert target["counters"]["faults"] == 3
    assert target["healthy"] is False


def test_reload_keeps_the_breaker_of_an_unchanged_target(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = _config(short_dir, upstream, breaker={"failures": 1, "reset": "60s"})
    d = daemon_factory(config)
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    assert _code(d) is grpc.StatusCode.UNAVAILABLE
    upstream.outage = None
    config["log"] = {"level": "debug"}  # a change elsewhere; target `up` is the same
    write_config(d.config_path, config)
    d.signal(signal.SIGHUP)
    d.wait_log('"reloaded"')
    with pytest.raises(grpc.RpcError) as err:
        _call(d)
    assert "circuit open" in err.value.details()
