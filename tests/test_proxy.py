"""The transparent proxy over real sockets: all call types, metadata, errors, deadlines."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.conftest import Daemon, Upstream, basic_config, eventually

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def test_unary_round_trips_bytes_and_upstream_metadata(daemon: Daemon) -> None:
    payload = bytes(range(256)) * 4
    with daemon.channel() as ch:
        reply, call = ch.unary_unary("/test.Echo/Unary").with_call(payload, timeout=5)
    assert reply == payload
    headers = dict(call.initial_metadata())
    assert headers["upstream-header"] == "present"
    assert UUID4.fullmatch(headers["correlation-id"])
    assert dict(call.trailing_metadata())["upstream-trailer"] == "present"


def test_four_mib_message_passes_both_ways(daemon: Daemon) -> None:
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    with daemon.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(payload, timeout=10) == payload


def test_server_stream_of_1000_messages(daemon: Daemon) -> None:
    request = (1000).to_bytes(4, "big") + b"payload"
    with daemon.channel() as ch:
        replies = list(ch.unary_stream("/test.Echo/ServerStream")(request, timeout=10))
    assert replies == [i.to_bytes(4, "big") + b"payload" for i in range(1000)]


def test_client_stream_of_1000_messages(daemon: Daemon) -> None:
    messages = [f"m{i};".encode() for i in range(1000)]
    with daemon.channel() as ch:
        reply = ch.stream_unary("/test.Echo/ClientStream")(iter(messages), timeout=10)
    assert reply == b"".join(messages)


def test_bidi_stream_echoes_each_message_in_order(daemon: Daemon) -> None:
    messages = [i.to_bytes(4, "big") * 8 for i in range(1000)]
    with daemon.channel() as ch:
        replies = list(ch.stream_stream("/test.Echo/Bidi")(iter(messages), timeout=10))
    assert replies == messages


def test_bidi_stream_is_interactive(daemon: Daemon) -> None:
    """Each reply arrives before the next request is sent: nothing is buffered whole."""
    queue: list[bytes] = []
    ready = threading.Semaphore(0)

    def requests():  # type: ignore[no-untyped-def]
        for i in range(20):
            queue.append(f"ping{i}".encode())
            yield queue[-1]
            ready.acquire()

    with daemon.channel() as ch:
        call = ch.stream_stream("/test.Echo/Bidi")(requests(), timeout=10)
        for i, reply in enumerate(call):
            assert reply == f"ping{i}".encode()
            ready.release()


def test_upstream_sees_injected_metadata(daemon: Daemon, upstream: Upstream) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller_md = [
        ("x-user-id", "alice"),
        ("x-correlation-id", "order-42"),
        ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),
        ("tracestate", "vendor=x"),
        ("custom-key", "custom-value"),
        ("blob-bin", b"\x00\x01"),
        ("sidecar-target", "up"),
        ("authorization", "Bearer secret-token"),
    ]
    with daemon.channel() as ch:
        _, call = ch.unary_unary("/test.Echo/Unary").with_call(b"x", metadata=caller_md)
    seen = upstream.seen[-1].metadata
    assert seen["user-id"] == "alice"
    assert seen["correlation-id"] == "order-42"
    assert dict(call.initial_metadata())["correlation-id"] == "order-42"
    assert UUID4.fullmatch(str(seen["request-id"]))
    parsed = TRACEPARENT.fullmatch(str(seen["traceparent"]))
    assert parsed and parsed[1] == trace_id and parsed[2] != "00f067aa0ba902b7"
    assert seen["tracestate"] == "vendor=x"
    assert seen["custom-key"] == "custom-value"
    assert seen["blob-bin"] == b"\x00\x01"
    for dropped in ("sidecar-target", "x-user-id", "x-correlation-id", "authorization"):
        assert dropped not in seen


def test_each_call_gets_its_own_request_id_and_a_new_trace(daemon: Daemon,
                                                           upstream: Upstream) -> None:
    with daemon.channel() as ch:
        for _ in range(3):
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    seen = upstream.seen[-3:]
    assert len({s.metadata["request-id"] for s in seen}) == 3
    assert len({str(s.metadata["traceparent"])[3:35] for s in seen}) == 3
    assert all(UUID4.fullmatch(str(s.metadata["correlation-id"])) for s in seen)
    assert all("user-id" not in s.metadata for s in seen)


def test_malformed_correlation_id_is_replaced(daemon: Daemon, upstream: Upstream) -> None:
    with daemon.channel() as ch:
        _, call = ch.unary_unary("/test.Echo/Unary").with_call(
            b"x", metadata=[("correlation-id", "x" * 129)])
    sent = upstream.seen[-1].metadata["correlation-id"]
    assert UUID4.fullmatch(str(sent))
    assert dict(call.initial_metadata())["correlation-id"] == sent


@pytest.mark.parametrize(
    ("identity", "caller_user", "expected"),
    [
        ({"user_id": "svc-orders", "trust_caller": True}, None, "svc-orders"),
        ({"user_id": "svc-orders", "trust_caller": True}, "alice", "alice"),
        ({"user_id": "svc-orders", "trust_caller": False}, "mallory", "svc-orders"),
        ({"trust_caller": False}, "mallory", None),
    ],
)
def test_user_id_follows_listener_identity(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    identity: dict[str, object], caller_user: str | None, expected: str | None,
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream, identity=identity))
    metadata = [("user-id", caller_user)] if caller_user else []
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=metadata, timeout=5)
    assert upstream.seen[-1].metadata.get("user-id") == expected


def test_listener_requiring_a_user_refuses_anonymous_calls(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream, identity={"require_user": True}))
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "app" in err.value.details()
    assert upstream.seen == []
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("x-user-id", "bob")], timeout=5)
    assert upstream.seen[-1].metadata["user-id"] == "bob"


def test_authorization_forwarded_only_when_target_allows(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"]["forward_authorization"] = True
    d = daemon_factory(config)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("authorization", "Bearer t")])
    assert upstream.seen[-1].metadata["authorization"] == "Bearer t"


@pytest.mark.parametrize("code", ["FAILED_PRECONDITION", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"])
def test_upstream_error_status_details_and_trailers_reach_caller(
    daemon: Daemon, code: str
) -> None:
    with daemon.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Fail")(
            b"x", metadata=[("fail-code", code), ("fail-details", "the upstream's words")],
            timeout=5)
    assert err.value.code() is grpc.StatusCode[code]
    assert err.value.details() == "the upstream's words"
    assert dict(err.value.trailing_metadata())["fail-trailer"] == "yes"


def test_upstream_unimplemented_method_status_is_kept_for_every_call_type(daemon: Daemon) -> None:
    """An upstream ending a stream call early must not turn into INTERNAL (grpc.aio race)."""
    with daemon.channel() as ch:
        for _ in range(100):
            call = ch.stream_stream("/test.Echo/NoSuchMethod")(
                iter([b"a" * 1000] * 50), timeout=5)
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_short_caller_deadline_gives_deadline_exceeded_and_ends_the_upstream_call(
    daemon: Daemon, upstream: Upstream
) -> None:
    with daemon.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Hold")(b"x", timeout=0.3)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # Hold never answers on its own: only the deadline reaching upstream ends its call.
    eventually(lambda: upstream.seen and upstream.seen[0].cancelled)
    assert 0 < upstream.seen[0].time_remaining < 0.3 + 0.01  # grpc-timeout rounds a little


def test_caller_deadline_is_passed_upstream(daemon: Daemon, upstream: Upstream) -> None:
    with daemon.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=2.0)
    # Derived from the caller's 2 s (give or take grpc-timeout's rounding): not the target's
    # 5 s default, nor no deadline at all.
    assert 0 < upstream.seen[-1].time_remaining < 2.0 + 0.01


def test_target_timeout_applies_when_caller_sets_no_deadline(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"]["timeout"] = "300ms"
    d = daemon_factory(config)
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/test.Echo/Hold")(b"x")  # no deadline of its own: only the daemon's
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "'up'" in err.value.details()
    eventually(lambda: upstream.seen and upstream.seen[0].cancelled)
    assert 0 < upstream.seen[0].time_remaining < 0.3 + 0.01  # grpc-timeout rounds a little


def test_caller_cancel_cancels_upstream_call(daemon: Daemon, upstream: Upstream) -> None:
    with daemon.channel() as ch:
        future = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=60)
        eventually(lambda: upstream.seen)
        future.cancel()
    eventually(lambda: upstream.seen[0].cancelled)


def test_no_route_gives_unimplemented_naming_the_method(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    d = daemon_factory(basic_config(short_dir, None))
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary("/some.Service/Method")(b"x", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "/some.Service/Method" in err.value.details()


def test_routes_pick_target_by_service_and_header_overrides(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    upstream_factory: Callable[[str], Upstream],
) -> None:
    first, second = upstream_factory("first"), upstream_factory("second")
    config = {
        "listeners": [{
            "name": "app", "socket": str(short_dir / "app.sock"),
            "routes": [{"service": "test.*", "target": "second"}],
            "default_target": "first",
        }],
        "admin": {"address": None},
        "targets": {"first": {"kind": "grpc", "address": first.address},
                    "second": {"kind": "grpc", "address": second.address}},
    }
    d = daemon_factory(config)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        assert len(second.seen) == 1 and not first.seen
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("sidecar-target", "first")])
        assert len(first.seen) == 1
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("sidecar-target", "nope")])
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()


def test_upstream_down_gives_unavailable_and_other_targets_still_work(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["down"] = {"kind": "grpc", "address": f"unix://{short_dir}/nobody.sock"}
    d = daemon_factory(config)
    with d.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(
                b"x", metadata=[("sidecar-target", "down")], timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "'down'" in err.value.details()
        assert ch.unary_unary("/test.Echo/Unary")(b"ok", timeout=5) == b"ok"


def test_upstream_gone_mid_stream_ends_the_call_cleanly(
    daemon: Daemon, upstream: Upstream
) -> None:
    def requests():  # type: ignore[no-untyped-def]
        yield b"first"
        upstream.server.stop(0).wait()  # every upstream call has ended
        yield b"second"

    with daemon.channel() as ch:
        call = ch.stream_stream("/test.Echo/Bidi")(requests(), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert daemon.process.poll() is None


def test_garbage_on_the_socket_does_not_disturb_other_callers(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        stub = ch.unary_unary("/test.Echo/Unary")
        assert stub(b"before", timeout=5) == b"before"
        for junk in (b"\x00" * 4096, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                     b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 512):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.connect(daemon.socket)
                raw.sendall(junk)
                raw.settimeout(5)
                try:
                    while raw.recv(4096):
                        pass
                except (TimeoutError, ConnectionResetError):
                    pass
        assert stub(b"after", timeout=5) == b"after"
    assert daemon.process.poll() is None


def test_access_log_line_per_call(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(
            b"x", metadata=[("correlation-id", "trace-me-1")], timeout=5)
    daemon.wait_log("trace-me-1")
    [entry] = [r for r in daemon.access() if r["sidecar.correlation_id"] == "trace-me-1"]
    assert entry["body"] == "call"
    assert entry["sidecar.listener"] == "app"
    assert (entry["rpc.service"], entry["rpc.method"]) == ("test.Echo", "Unary")
    assert entry["sidecar.target"] == "up"
    assert entry["sidecar.status"] == "OK"
    assert entry["sidecar.duration_ms"] >= 0
