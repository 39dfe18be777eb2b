"""`listeners[].rate_limit` over the real socket: `burst` calls go, the next is
RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`, per listener and per caller."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import Daemon, Upstream, basic_config
from tests.http_upstream import HttpUpstream
from tests.peer_client import GID, OTHER_GID, OTHER_UID, UID, Call, call_as, needs_root, open_to_all

UNARY = "/test.Echo/Unary"
HTTP_CALL = "/sidecar.v1.HttpProxy/Call"
MINUTE_MS = 60_000


def _config(short_dir: Path, upstream: Upstream | None, http: HttpUpstream | None = None,
            **limit: Any) -> dict[str, Any]:
    open_to_all(short_dir)
    config = basic_config(short_dir, upstream, mode="0666",
                          rate_limit={"rate": "1/m", **limit})  # no refill during a test
    if http is not None:
        config["targets"]["web"] = {"kind": "http", "base_url": http.url}
    return config


def _pushback(error: grpc.RpcError) -> int:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    return int(trailers["grpc-retry-pushback-ms"])


def _http(stub: sidecar_pb2_grpc.HttpProxyStub, **kwargs: Any) -> Any:
    return stub.Call(sidecar_pb2.HttpRequest(target="web", method="GET", path="/echo"),
                     timeout=5, **kwargs)


def test_proxied_calls_get_the_burst_then_resource_exhausted_with_pushback(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> None:
    d = daemon_factory(_config(short_dir, upstream, burst=3))
    with d.channel() as ch:
        unary = ch.unary_unary(UNARY)
        assert [unary(b"x", timeout=5) for _ in range(3)] == [b"x"] * 3
        with pytest.raises(grpc.RpcError) as err:
            unary(b"x", timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "listener 'app'" in (err.value.details() or "")
    assert MINUTE_MS - 10_000 < _pushback(err.value) <= MINUTE_MS
    assert upstream.calls("Unary") == 3


def test_http_proxy_calls_share_the_listeners_bucket_and_get_pushback(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        http_upstream: HttpUpstream) -> None:
    d = daemon_factory(_config(short_dir, None, http_upstream, burst=2))
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.HttpProxyStub(ch)
        assert [_http(stub).status for _ in range(2)] == [200, 200]
        with pytest.raises(grpc.RpcError) as err:
            _http(stub, metadata=[("x-user-id", "someone-else")])  # one bucket for all
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert MINUTE_MS - 10_000 < _pushback(err.value) <= MINUTE_MS
    assert len(http_upstream.received) == 2


@needs_root
def test_per_listener_limit_is_shared_by_every_uid(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        http_upstream: HttpUpstream) -> None:
    d = daemon_factory(_config(short_dir, None, http_upstream, burst=3, per="listener"))
    request = sidecar_pb2.HttpRequest(target="web", method="GET", path="/echo")
    call = Call(HTTP_CALL, request.SerializeToString())
    first = call_as(UID, GID, d.socket, [call, call])
    second = call_as(OTHER_UID, OTHER_GID, d.socket, [call, call])
    assert [a.code for a in first + second] == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED"]
    assert int(second[1].trailers["grpc-retry-pushback-ms"]) > 0


@needs_root
def test_per_caller_limit_gives_each_uid_its_own_burst(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> None:
    d = daemon_factory(_config(short_dir, upstream, burst=2, per="caller"))
    calls = [Call(UNARY, b"x")] * 3
    first = call_as(UID, GID, d.socket, calls)
    second = call_as(OTHER_UID, OTHER_GID, d.socket, calls)
    for answers in (first, second):
        assert [a.code for a in answers] == ["OK", "OK", "RESOURCE_EXHAUSTED"]
        assert int(answers[2].trailers["grpc-retry-pushback-ms"]) > MINUTE_MS - 10_000
    assert upstream.calls("Unary") == 4


def test_per_caller_limit_follows_a_trusted_user_id(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        http_upstream: HttpUpstream) -> None:
    d = daemon_factory(_config(short_dir, None, http_upstream, burst=1, per="caller"))
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.HttpProxyStub(ch)
        assert _http(stub, metadata=[("x-user-id", "alice")]).status == 200
        with pytest.raises(grpc.RpcError) as err:
            _http(stub, metadata=[("x-user-id", "alice")])
        assert _http(stub, metadata=[("x-user-id", "bob")]).status == 200
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(http_upstream.received) == 2


def test_health_checks_are_not_rate_limited(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    d = daemon_factory(_config(short_dir, upstream, burst=1))
    with d.channel() as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        for _ in range(5):
            assert check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
