"""A caller's metadata never poses as what the daemon injects: renamed identity names and
`-bin` forms, any case, never reach a gRPC, HTTP or Kafka upstream (real servers)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import Daemon, basic_config
from tests.http_upstream import HttpUpstream
from tests.kafka_broker import Broker, broker

__all__ = ["broker"]  # the fixture, imported for pytest

RENAMED = {"user_id": "x-user", "correlation_id": "x-corr", "request_id": "x-req"}
# What a hostile caller sends, as gRPC metadata: the target's names, their -bin forms,
# the contract's default names' -bin forms.
FORGED: list[tuple[str, str | bytes]] = [
    ("x-user", "evil"), ("x-user-bin", b"evil"), ("x-corr", "forged"),
    ("x-corr-bin", b"forged"), ("x-req", "forged"), ("x-req-bin", b"forged"),
    ("user-id-bin", b"evil"), ("x-user-id-bin", b"evil"), ("x-user-id", "evil"),
    ("app-header", "kept"),
]
# The same as HTTP or Kafka headers, in mixed case.
FORGED_HEADERS = [
    ("X-User", "evil"), ("x-USER", "evil"), ("X-User-Bin", "ZXZpbA"), ("X-Corr", "forged"),
    ("x-corr-BIN", "Zm9yZ2Vk"), ("X-Req", "forged"), ("User-Id-Bin", "ZXZpbA"),
    ("X-User-Id-Bin", "ZXZpbA"), ("X-User-Id", "evil"), ("App-Header", "kept"),
]


class RecordingUpstream:
    """A gRPC server that keeps each call's metadata as a list, duplicates and all."""

    def __init__(self, socket_path: str) -> None:
        self.address = f"unix://{socket_path}"
        self.metadata: list[list[tuple[str, str | bytes]]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.metadata.append(list(context.invocation_metadata()))
            return request

        handler = grpc.unary_unary_rpc_method_handler(unary)

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> Any:
                return handler

        self.server.add_generic_rpc_handlers((Handler(),))
        self.server.add_insecure_port(f"unix:{socket_path}")
        self.server.start()


@pytest.fixture
def recording(short_dir: Path) -> Iterator[RecordingUpstream]:
    up = RecordingUpstream(str(short_dir / "rec.sock"))
    yield up
    up.server.stop(0).wait()


def _untrusting(short_dir: Path) -> dict[str, Any]:
    config = basic_config(short_dir, None,
                          identity={"user_id": "svc-a", "trust_caller": False})
    config["targets"] = {}
    return config


def _names(pairs: list[tuple[str, Any]]) -> list[str]:
    return [k.lower() for k, _ in pairs]


def test_renamed_and_bin_identity_metadata_never_reach_a_grpc_target(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        recording: RecordingUpstream) -> None:
    config = _untrusting(short_dir)
    config["targets"]["up"] = {"kind": "grpc", "address": recording.address,
                               "metadata": RENAMED}
    config["listeners"][0]["default_target"] = "up"
    d = daemon_factory(config)
    with d.channel() as ch:
        assert ch.unary_unary("/any.Service/Method")(b"x", metadata=FORGED, timeout=5) == b"x"
    [seen] = recording.metadata
    names = _names(seen)
    assert dict(seen)["x-user"] == "svc-a" and names.count("x-user") == 1
    assert names.count("x-corr") == 1 and dict(seen)["x-corr"] != "forged"
    assert names.count("x-req") == 1 and dict(seen)["x-req"] != "forged"
    assert not [n for n in names if n.endswith("-bin")]
    assert "x-user-id" not in names
    assert dict(seen)["app-header"] == "kept"


def test_default_named_bin_user_ids_never_pass_an_untrusting_listener(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        recording: RecordingUpstream) -> None:
    config = _untrusting(short_dir)
    config["targets"]["up"] = {"kind": "grpc", "address": recording.address}
    config["listeners"][0]["default_target"] = "up"
    d = daemon_factory(config)
    forged = [("user-id-bin", b"evil"), ("x-user-id-bin", b"evil"), ("user-id", "evil")]
    with d.channel() as ch:
        ch.unary_unary("/any.Service/Method")(b"x", metadata=forged, timeout=5)
    [seen] = recording.metadata
    assert [(k, v) for k, v in seen if "user-id" in k] == [("user-id", "svc-a")]


def test_renamed_and_bin_identity_headers_never_reach_an_http_target(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        http_upstream: HttpUpstream) -> None:
    config = _untrusting(short_dir)
    config["targets"]["web"] = {"kind": "http", "base_url": http_upstream.url,
                                "metadata": {"user_id": "X-User", "correlation_id": "X-Corr",
                                             "request_id": "X-Req"}}
    d = daemon_factory(config)
    request = sidecar_pb2.HttpRequest(
        target="web", method="GET", path="/echo",
        headers=[sidecar_pb2.Header(name=k, value=v) for k, v in FORGED_HEADERS])
    with d.channel() as ch:
        assert sidecar_pb2_grpc.HttpProxyStub(ch).Call(
            request, metadata=FORGED, timeout=10).status == 200
    [got] = http_upstream.received
    assert got.headers.getall("X-User") == ["svc-a"]
    assert len(got.headers.getall("X-Corr")) == 1 and got.headers["X-Corr"] != "forged"
    assert len(got.headers.getall("X-Req")) == 1 and got.headers["X-Req"] != "forged"
    assert not [n for n in got.headers if n.lower().endswith("-bin")]
    assert "X-User-Id" not in got.headers
    assert got.headers["App-Header"] == "kept"


def test_renamed_and_bin_identity_headers_never_reach_a_kafka_message(
        daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker) -> None:
    topic = broker.create_topic(partitions=1)
    config = _untrusting(short_dir)
    config["targets"]["events"] = {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                                   "metadata": RENAMED}
    d = daemon_factory(config)
    headers = [sidecar_pb2.Header(name=k, value=v) for k, v in FORGED_HEADERS]
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.PublisherStub(ch)
        stub.Publish(sidecar_pb2.PublishRequest(target="events", topic=topic, value=b"one",
                                                headers=headers), metadata=FORGED, timeout=10)
        stub.PublishBatch(sidecar_pb2.PublishBatchRequest(
            target="events", topic=topic,
            messages=[sidecar_pb2.BatchMessage(value=b"two", headers=headers)]),
            metadata=FORGED, timeout=10)
    messages = broker.read_all(topic)
    assert [m.value() for m in messages] == [b"one", b"two"]
    for message in messages:
        got = message.headers() or []
        names = _names(got)
        assert [v for k, v in got if k.lower() == "x-user"] == [b"svc-a"]
        assert names.count("x-corr") == 1 and dict(got)["x-corr"] != b"forged"
        assert names.count("x-req") == 1 and dict(got)["x-req"] != b"forged"
        assert not [n for n in names if n.endswith("-bin")]
        assert "x-user-id" not in names
        assert dict(got)["App-Header"] == b"kept"
