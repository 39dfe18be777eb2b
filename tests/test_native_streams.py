"""The daemon's streaming methods on the engine over real sockets: Health/Watch, server
reflection v1 and v1alpha, methods of its own it does not serve, back-pressure on a caller
that does not read, and a daemon process that never loads grpcio."""

from __future__ import annotations

import signal
import struct
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hyperframe.frame import DataFrame, Frame, HeadersFrame, PingFrame, WindowUpdateFrame

from tests.conftest import Daemon, Upstream, basic_config, eventually
from tests.engine.daemon_logs import json_log
from tests.engine.test_engine_hostile import RawCaller, request
from tests.engine.wire import data, ping, settings, window_update

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse  # v1 is the same message, field for field


def _reflect(d: Daemon, path: str, *requests: Request) -> list[Response]:
    with d.channel() as ch:
        call = ch.stream_stream(path, request_serializer=Request.SerializeToString,
                                response_deserializer=Response.FromString)
        return list(call(iter(requests), timeout=10))


@pytest.fixture
def two_targets(daemon_factory: Callable[..., Daemon], short_dir: Path,
                upstream: Upstream) -> Daemon:
    config = basic_config(short_dir, upstream)
    config["targets"]["down"] = {"kind": "grpc", "address": f"unix://{short_dir}/nobody.sock",
                                 "required": True}
    config["drain_timeout"] = "60s"
    return daemon_factory(config)


@pytest.mark.parametrize("path", [V1, V1ALPHA])
def test_both_reflection_versions_list_and_describe_the_daemons_services(
        daemon: Daemon, upstream: Upstream, path: str) -> None:
    listed, described, foreign, nonsense = _reflect(
        daemon, path, Request(list_services=""),
        Request(file_containing_symbol="sidecar.v1.HttpProxy"),
        Request(file_containing_symbol="google.protobuf.FileDescriptorProto"),
        Request())
    names = {s.name for s in listed.list_services_response.service}
    assert names == {"sidecar.v1.HttpProxy", "sidecar.v1.Publisher", "grpc.health.v1.Health",
                     "grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection"}
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    assert files[0].package == "sidecar.v1"
    assert "HttpProxy" in [s.name for s in files[0].service]
    assert described.original_request.file_containing_symbol == "sidecar.v1.HttpProxy"
    # What else the process loaded is not the daemon's API: not described.
    assert foreign.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert nonsense.error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert upstream.seen == []  # reflection is the daemon's, never the default target's


def test_the_v1_reflection_service_describes_itself(daemon: Daemon) -> None:
    [reply] = _reflect(daemon, V1, Request(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"))
    [file] = [descriptor_pb2.FileDescriptorProto.FromString(raw)
              for raw in reply.file_descriptor_response.file_descriptor_proto]
    assert (file.name, file.package) == ("grpc/reflection/v1/reflection.proto",
                                         "grpc.reflection.v1")
    method = file.service[0].method[0]
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming


@pytest.mark.parametrize("path", ["/grpc.reflection.v2.ServerReflection/ServerReflectionInfo",
                                  "/sidecar.v1.HttpProxy/Nope",
                                  "/grpc.health.v1.Health/List"])
def test_a_method_of_the_daemons_own_it_does_not_serve_is_unimplemented(
        daemon: Daemon, upstream: Upstream, path: str) -> None:
    with daemon.channel() as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary(path)(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert path in (caught.value.details() or "")
    assert upstream.seen == []


def test_watch_sends_the_status_then_each_change(two_targets: Daemon,
                                                 short_dir: Path) -> None:
    with two_targets.channel() as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="down"), timeout=30)
        assert next(watch).status == NOT_SERVING  # its socket is not there
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_insecure_port(f"unix:{short_dir}/nobody.sock")
        server.start()
        try:
            assert next(watch).status == SERVING  # pushed once the pool connects
        finally:
            server.stop(0).wait()
        watch.cancel()
        unknown = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="no-such-target"), timeout=30)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()


def test_sigterm_tells_watchers_not_serving_then_ends_their_streams(two_targets: Daemon) -> None:
    seen: list[object] = []
    ended = threading.Event()
    with two_targets.channel() as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(),
                                                     timeout=60)

        def read() -> None:
            try:
                for reply in watch:
                    seen.append(reply.status)
            except grpc.RpcError as e:
                seen.append(e.code())
            ended.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        eventually(lambda: seen == [SERVING])
        two_targets.signal(signal.SIGTERM)
        assert ended.wait(30), "the Watch stream was not ended by the drain"
    assert seen == [SERVING, NOT_SERVING, grpc.StatusCode.UNAVAILABLE]
    # The watcher does not hold the drain for its 60 s: the daemon stops at once.
    assert two_targets.wait(timeout=30) == 0
    json_log(two_targets)


def test_a_reflection_caller_that_never_reads_holds_its_own_window_not_our_memory(
        daemon: Daemon) -> None:
    """With its window at 0 the caller takes no answer: the daemon stops taking its
    requests (no WINDOW_UPDATE gives their bytes back, so the caller's window bounds
    them) until the caller reads again; then every request is answered."""
    caller = RawCaller(daemon.socket)
    try:
        _never_reads_then_reads(caller)
    finally:
        caller.sock.close()
    with daemon.channel() as ch:  # the daemon served others meanwhile, and still does
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)


def _never_reads_then_reads(caller: RawCaller) -> None:
    caller.send(settings({0x4: 0}))  # SETTINGS_INITIAL_WINDOW_SIZE 0: we take no DATA
    message = Request(host="h" * 60_000, list_services="").SerializeToString()
    count = 50  # 3 MB of requests: more than half the daemon's 4 MiB stream window
    body = (struct.pack(">BI", 0, len(message)) + message) * count
    frames = [data(1, body[i:i + 16_384]) for i in range(0, len(body), 16_384)]
    caller.send(caller.peer.headers(1, request(V1.encode())) + b"".join(frames)
                + ping(b"all sent"))

    def acked(frames: list[Frame]) -> bool:  # the daemon has read every request by then
        return any(isinstance(f, PingFrame) and f.opaque_data == b"all sent" for f in frames)

    held = caller.frames_until(acked)
    assert [f for f in held if isinstance(f, HeadersFrame) and f.stream_id == 1]
    assert not [f for f in held if isinstance(f, WindowUpdateFrame) and f.stream_id == 1]
    caller.send(window_update(0, 1 << 30) + window_update(1, 1 << 30))

    def replies(frames: list[Frame]) -> int:
        got = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == 1)
        return got.count(b"sidecar.v1.HttpProxy")

    done = caller.frames_until(lambda frames: replies(frames) == count, timeout=30)
    # Taken now, the request bytes are given back.
    assert [f for f in done if isinstance(f, WindowUpdateFrame) and f.stream_id == 1]


def test_the_daemon_process_never_loads_grpcio(daemon: Daemon, upstream: Upstream) -> None:
    with daemon.channel() as ch:  # every kind of call the daemon serves has been made
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    _reflect(daemon, V1ALPHA, Request(list_services=""))
    maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    assert "cygrpc" not in maps and "grpc/_cython" not in maps
