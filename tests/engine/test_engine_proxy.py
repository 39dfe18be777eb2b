"""The frame engine (`engine: frames`) over real sockets: a daemon process, grpcio callers,
the conftest upstream. Proxied calls of every type, metadata, statuses, retries, deadlines,
cancellation, the daemon's own services and the drain."""

from __future__ import annotations

import re
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

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def frames_config(short_dir: Path, upstream: Upstream | None, **listener: Any) -> dict[str, Any]:
    return basic_config(short_dir, upstream, engine="frames", **listener)


@pytest.fixture
def frames(daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> Daemon:
    """A daemon whose one listener runs the frame engine, routing everything to `upstream`."""
    return daemon_factory(frames_config(short_dir, upstream))


@pytest.fixture(params=["grpcio", "frames"])
def either(request: pytest.FixtureRequest, daemon_factory: Callable[..., Daemon],
           short_dir: Path, upstream: Upstream) -> Daemon:
    """The same daemon on each engine: behaviour the two must share."""
    return daemon_factory(basic_config(short_dir, upstream, engine=request.param))


# ---- call types -----------------------------------------------------------------------


def test_unary_round_trips_bytes_headers_and_trailers(either: Daemon) -> None:
    payload = bytes(range(256)) * 4
    with either.channel() as ch:
        reply, call = ch.unary_unary("/test.Echo/Unary").with_call(payload, timeout=5)
    assert reply == payload
    headers = dict(call.initial_metadata())
    assert headers["upstream-header"] == "present"
    assert UUID4.fullmatch(headers["correlation-id"])
    assert dict(call.trailing_metadata())["upstream-trailer"] == "present"


def test_four_mib_message_passes_both_ways(either: Daemon) -> None:
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    with either.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(payload, timeout=10) == payload


def test_server_stream_of_1000_messages(either: Daemon) -> None:
    request = (1000).to_bytes(4, "big") + b"payload"
    with either.channel() as ch:
        replies = list(ch.unary_stream("/test.Echo/ServerStream")(request, timeout=10))
    assert replies == [i.to_bytes(4, "big") + b"payload" for i in range(1000)]


def test_client_stream_of_1000_messages(either: Daemon) -> None:
    messages = [f"m{i};".encode() for i in range(1000)]
    with either.channel() as ch:
        reply = ch.stream_unary("/test.Echo/ClientStream")(iter(messages), timeout=10)
    assert reply == b"".join(messages)


def test_bidi_stream_is_interactive(either: Daemon) -> None:
    """Each reply arrives before the next request is sent: nothing is buffered whole."""
    ready = threading.Semaphore(0)

    def requests():  # type: ignore[no-untyped-def]
        for i in range(20):
            yield f"ping{i}".encode()
            ready.acquire()

    with either.channel() as ch:
        call = ch.stream_stream("/test.Echo/Bidi")(requests(), timeout=10)
        for i, reply in enumerate(call):
            assert reply == f"ping{i}".encode()
            ready.release()


def test_many_concurrent_calls_share_the_connections(frames: Daemon) -> None:
    with frames.channel() as ch, futures.ThreadPoolExecutor(16) as pool:
        stub = ch.unary_unary("/test.Echo/Unary")
        replies = list(pool.map(lambda i: stub(b"%d" % i, timeout=10), range(300)))
    assert replies == [b"%d" % i for i in range(300)]


# ---- metadata and statuses ------------------------------------------------------------


def test_upstream_sees_injected_metadata(either: Daemon, upstream: Upstream) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller_md = [
        ("x-user-id", "alice"),
        ("x-correlation-id", "order-42"),
        ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),
        ("custom-key", "custom-value"),
        ("blob-bin", b"\x00\x01"),
        ("sidecar-target", "up"),
        ("authorization", "Bearer secret-token"),
    ]
    with either.channel() as ch:
        _, call = ch.unary_unary("/test.Echo/Unary").with_call(b"x", metadata=caller_md)
    seen = upstream.seen[-1].metadata
    assert seen["user-id"] == "alice"
    assert seen["correlation-id"] == "order-42"
    assert dict(call.initial_metadata())["correlation-id"] == "order-42"
    assert UUID4.fullmatch(str(seen["request-id"]))
    parsed = TRACEPARENT.fullmatch(str(seen["traceparent"]))
    assert parsed and parsed[1] == trace_id and parsed[2] != "00f067aa0ba902b7"
    assert seen["custom-key"] == "custom-value"
    assert seen["blob-bin"] == b"\x00\x01"
    for dropped in ("sidecar-target", "x-user-id", "x-correlation-id", "authorization"):
        assert dropped not in seen


@pytest.mark.parametrize("code", ["FAILED_PRECONDITION", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"])
def test_upstream_status_details_and_trailers_reach_the_caller(frames: Daemon, code: str) -> None:
    with frames.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Fail")(
            b"x", metadata=[("fail-code", code), ("fail-details", "the upstream's words")],
            timeout=5)
    assert err.value.code() is grpc.StatusCode[code]
    assert err.value.details() == "the upstream's words"
    assert dict(err.value.trailing_metadata())["fail-trailer"] == "yes"


def test_upstream_unimplemented_status_is_kept_for_stream_calls(frames: Daemon) -> None:
    with frames.channel() as ch:
        for _ in range(20):
            call = ch.stream_stream("/test.Echo/NoSuchMethod")(
                iter([b"a" * 1000] * 50), timeout=5)
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


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


def test_listener_requiring_a_user_refuses_anonymous_calls(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(frames_config(short_dir, upstream, identity={"require_user": True}))
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert upstream.seen == []


# ---- the daemon's own services --------------------------------------------------------


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


# ---- resilience -----------------------------------------------------------------------


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
    config["targets"] = {"late": {"kind": "grpc", "address": f"unix://{socket_path}",
                                  "breaker": {"failures": 100},
                                  "retry": {"attempts": 5, "backoff": {"base": "200ms",
                                                                       "max": "400ms"}}}}
    config["listeners"][0]["default_target"] = "late"
    d = daemon_factory(config)
    with d.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=2)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "'late'" in err.value.details()
        started: list[Upstream] = []
        timer = threading.Timer(0.3, lambda: started.append(start_upstream(socket_path)))
        timer.start()  # the upstream comes up while the next call is being retried
        try:
            assert ch.unary_unary("/test.Echo/Unary")(b"back", timeout=5) == b"back"
        finally:
            timer.join()
            started[0].stop()


def test_deadline_gives_deadline_exceeded_naming_the_target_and_cancels_upstream(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = frames_config(short_dir, upstream)
    config["targets"]["up"]["timeout"] = "300ms"
    d = daemon_factory(config)
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Hold")(b"x")
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "'up'" in err.value.details()
    eventually(lambda: upstream.seen and upstream.seen[0].cancelled)
    assert 0 < upstream.seen[0].time_remaining < 0.3 + 0.01


def test_caller_deadline_is_passed_upstream(frames: Daemon, upstream: Upstream) -> None:
    with frames.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=2.0)
    assert 0 < upstream.seen[-1].time_remaining < 2.0 + 0.01


def test_caller_cancel_cancels_the_upstream_call(frames: Daemon, upstream: Upstream) -> None:
    with frames.channel() as ch:
        future = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=60)
        eventually(lambda: upstream.seen)
        future.cancel()
    eventually(lambda: upstream.seen[0].cancelled)


# ---- lifecycle ------------------------------------------------------------------------


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
