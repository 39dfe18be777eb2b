"""What the frame engine adds over tests/test_proxy.py, test_resilience.py and
test_lifecycle.py (which run on it too): streams sharing connections, trailers-only
daemon answers, dispatch of the daemon's own services, replay on retry, a target that
comes up mid-retry, and ten held calls through a drain."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import Daemon, Upstream, basic_config, eventually, start_upstream


def frames_config(short_dir: Path, upstream: Upstream | None, **listener: Any) -> dict[str, Any]:
    return basic_config(short_dir, upstream, **listener)


@pytest.fixture
def frames(daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> Daemon:
    """A daemon whose one listener routes everything to `upstream`."""
    return daemon_factory(frames_config(short_dir, upstream))


def test_many_concurrent_calls_share_the_connections(frames: Daemon) -> None:
    with frames.channel() as ch, futures.ThreadPoolExecutor(16) as pool:
        stub = ch.unary_unary("/test.Echo/Unary")
        replies = list(pool.map(lambda i: stub(b"%d" % i, timeout=10), range(300)))
    assert replies == [b"%d" % i for i in range(300)]


def test_daemon_errors_are_trailers_only_with_correlation_id(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    d = daemon_factory(frames_config(short_dir, None))
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/some.Service/Method")(
            b"x", metadata=[("correlation-id", "c-1")], timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "/some.Service/Method" in err.value.details()
    assert dict(err.value.trailing_metadata())["correlation-id"] == "c-1"


def test_health_and_a_sidecar_v1_call_are_answered_by_the_daemon(
    frames: Daemon, upstream: Upstream
) -> None:
    with frames.channel() as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            sidecar_pb2_grpc.HttpProxyStub(ch).Call(
                sidecar_pb2.HttpRequest(target="up", method="GET", path="/"), timeout=5)
    # The daemon's own answer (an http call to a grpc target), not the upstream's.
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'up'" in err.value.details()
    assert upstream.seen == []


def test_flaky_upstream_is_retried_and_the_request_replayed(
    frames: Daemon, upstream: Upstream
) -> None:
    messages = [b"one", b"two", b"three"]
    with frames.channel() as ch:
        replies = list(ch.stream_stream("/test.Echo/FlakyStream")(
            iter(messages), metadata=[("fail-times", "2")], timeout=10))
    assert replies == messages
    assert upstream.calls("FlakyStream") == 3
    assert upstream.received == [messages] * 3


def test_upstream_down_then_up_is_retried(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    socket_path = str(short_dir / "late.sock")
    config = frames_config(short_dir, None)
    # Ten attempts 0-400 ms apart (full jitter) and redials at most 100 ms apart: the
    # second call's attempts outlast the upstream's start-up whatever the jitter draws
    # (five attempts could all fall inside it, and the redial backoff, growing with
    # every failure of the first call, could outlast the call).
    config["targets"] = {"late": {"kind": "grpc", "address": f"unix://{socket_path}",
                                  "breaker": {"failures": 100},
                                  "pool": {"reconnect": {"base": "50ms", "max": "100ms"}},
                                  "retry": {"attempts": 10, "backoff": {"base": "200ms",
                                                                        "max": "400ms"}}}}
    config["listeners"][0]["default_target"] = "late"
    d = daemon_factory(config)
    with d.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=1)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "'late'" in err.value.details()
        started: list[Upstream] = []
        timer = threading.Timer(0.3, lambda: started.append(start_upstream(socket_path)))
        timer.start()  # the upstream comes up while the next call is being retried
        try:
            assert ch.unary_unary("/test.Echo/Unary")(b"back", timeout=8) == b"back"
        finally:
            timer.join()
            started[0].stop()


def test_sigterm_lets_calls_in_flight_finish(frames: Daemon, upstream: Upstream) -> None:
    with frames.channel() as ch:
        stub = ch.unary_unary("/test.Echo/Hold")
        calls = [stub.future(b"%d" % i, timeout=20) for i in range(10)]
        eventually(lambda: len(upstream.seen) == 10)
        frames.signal(signal.SIGTERM)
        frames.wait_log('"stopping"')
        upstream.release.set()
        replies = [c.result() for c in calls]
    assert replies == [b"%d" % i for i in range(10)]
    assert frames.wait() == 0
    assert not Path(frames.socket).exists()
