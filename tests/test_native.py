"""The daemon's own unary methods answered on the engine (services/native.py) over real
sockets: framing and size errors named by method, cancellation logged as the caller saw
it, and Health/Watch still served (by the internal server) beside the native Check."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._generated import sidecar_pb2
from tests.conftest import Daemon, eventually
from tests.http_upstream import HttpUpstream, http_config

CALL = "/sidecar.v1.HttpProxy/Call"


@pytest.fixture
def web_daemon(daemon_factory: Callable[..., Daemon], short_dir: Path,
               http_upstream: HttpUpstream) -> Daemon:
    config = http_config(str(short_dir / "app.sock"), http_upstream.url)
    config["defaults"] = {"limits": {"max_message": "64KiB"}}
    return daemon_factory(config)


def raw_call(d: Daemon, payload: bytes, timeout: float = 5) -> bytes:
    with d.channel() as ch:
        return bytes(ch.unary_unary(CALL)(payload, timeout=timeout))


def test_a_request_that_is_not_the_message_is_internal_naming_the_method(
    web_daemon: Daemon, http_upstream: HttpUpstream
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        raw_call(web_daemon, b"\xff\xff\xff")
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert err.value.details() == f"{CALL}: the request is not a valid message"
    assert http_upstream.received == []

    def logged() -> dict[str, object]:  # answered before any handler ran, logged all the same
        [line] = [r for r in web_daemon.access()
                  if "/" + r["rpc.service"] + "/" + r["rpc.method"] == CALL]
        return dict(line)

    line = eventually(logged)
    assert line["sidecar.status"] == "INTERNAL" and "sidecar.target" not in line


def test_a_request_over_max_message_is_resource_exhausted_and_never_sent(
    web_daemon: Daemon, http_upstream: HttpUpstream
) -> None:
    request = sidecar_pb2.HttpRequest(target="web", method="POST", path="/echo",
                                      body=b"x" * (128 * 1024))
    with pytest.raises(grpc.RpcError) as err:
        raw_call(web_daemon, request.SerializeToString())
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_message" in err.value.details() and CALL in err.value.details()
    assert http_upstream.received == []
    # The connection stays usable.
    ok = sidecar_pb2.HttpRequest(target="web", method="GET", path="/echo")
    reply = sidecar_pb2.HttpResponse.FromString(raw_call(web_daemon, ok.SerializeToString()))
    assert reply.status == 200


def test_a_compressed_request_is_unimplemented(web_daemon: Daemon) -> None:
    with web_daemon.channel() as ch, pytest.raises(grpc.RpcError) as err:
        request = sidecar_pb2.HttpRequest(target="web", method="POST", path="/echo",
                                          body=b"x" * 8192)  # small ones go uncompressed
        ch.unary_unary(CALL)(request.SerializeToString(), timeout=5,
                             compression=grpc.Compression.Gzip)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "compressed" in err.value.details()


def test_a_cancelled_call_is_logged_cancelled(web_daemon: Daemon,
                                              http_upstream: HttpUpstream) -> None:
    request = sidecar_pb2.HttpRequest(target="web", method="GET", path="/slow/20000")
    with web_daemon.channel() as ch:
        future = ch.unary_unary(CALL).future(request.SerializeToString(), timeout=30)
        eventually(lambda: http_upstream.paths("/slow"))
        future.cancel()

    def logged() -> dict[str, object]:
        [line] = [r for r in web_daemon.access()
                  if (r["rpc.service"], r["rpc.method"]) == ("sidecar.v1.HttpProxy", "Call")]
        return dict(line)

    assert eventually(logged)["sidecar.status"] == "CANCELLED"


def test_health_check_is_native_and_watch_still_streams(web_daemon: Daemon) -> None:
    with web_daemon.channel() as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_a_request_split_over_many_data_frames_is_one_message(web_daemon: Daemon,
                                                              http_upstream: HttpUpstream
                                                              ) -> None:
    body = bytes(range(256)) * 200  # 51,200 bytes: several DATA frames
    request = sidecar_pb2.HttpRequest(target="web", method="POST", path="/echo", body=body)
    reply = sidecar_pb2.HttpResponse.FromString(
        raw_call(web_daemon, request.SerializeToString()))
    assert reply.status == 200 and reply.body == body
    assert struct.calcsize(">BI") == 5
