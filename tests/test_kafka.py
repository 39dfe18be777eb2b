"""Kafka publishing through the daemon, against a real broker (tansu)."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import ROOT, Daemon, basic_config, eventually, free_port
from tests.kafka_broker import Broker, broker

__all__ = ["broker"]  # the fixture, imported for pytest

TRACE_ID = "ab" * 16
CALLER_SPAN = "cd" * 8
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _config(short_dir: Path, broker: Broker, **target: Any) -> dict[str, Any]:
    config = basic_config(short_dir, None)
    config["targets"] = {
        "events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                   "topics": ["t-*"], **target},
        "grpc-up": {"kind": "grpc", "address": "unix:///nonexistent/up.sock"},
    }
    return config


def _stub(channel: grpc.Channel) -> sidecar_pb2_grpc.PublisherStub:
    return sidecar_pb2_grpc.PublisherStub(channel)


def _request(topic: str, value: bytes = b"v", **fields: Any) -> Any:
    return sidecar_pb2.PublishRequest(target=fields.pop("target", "events"), topic=topic,
                                      value=value, **fields)


def _code(d: Daemon, request: Any, timeout: float = 5) -> tuple[grpc.StatusCode, str]:
    with d.channel() as ch:
        try:
            _stub(ch).Publish(request, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def _target_health(d: Daemon) -> int:
    with d.channel() as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="events"), timeout=2)
    return int(reply.status)


def _ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/readyz", timeout=2) as reply:
            return int(reply.status) == 200
    except urllib.error.HTTPError:
        return False


def test_publish_answers_partition_and_offset_and_the_message_carries_identity_headers(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic()
    d = daemon_factory(_config(short_dir, broker))
    headers = [sidecar_pb2.Header(name="app-header", value="yes"),
               sidecar_pb2.Header(name="user-id", value="mallory")]
    metadata = [("x-user-id", "alice"), ("x-correlation-id", "corr-1"),
                ("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")]
    with d.channel() as ch:
        reply, call = _stub(ch).Publish.with_call(
            _request(topic, b"v1", key=b"k1", headers=headers), metadata=metadata, timeout=10)
    assert (reply.topic, reply.offset) == (topic, 0)
    assert ("correlation-id", "corr-1") in call.initial_metadata()
    [message] = broker.read_all(topic)
    assert (message.partition(), message.offset()) == (reply.partition, reply.offset)
    assert (message.key(), message.value()) == (b"k1", b"v1")
    names = [name for name, _ in message.headers() or []]
    assert names.count("user-id") == 1  # the caller's own `user-id` header was dropped
    got = dict(message.headers() or [])
    assert got["app-header"] == b"yes"
    assert got["user-id"] == b"alice"
    assert got["correlation-id"] == b"corr-1"
    uuid.UUID(got["request-id"].decode())
    trace = got["traceparent"].decode().split("-")
    assert trace[1] == TRACE_ID and trace[2] != CALLER_SPAN


def test_publish_honours_an_explicit_partition(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic(partitions=3)
    d = daemon_factory(_config(short_dir, broker))
    with d.channel() as ch:
        replies = [_stub(ch).Publish(_request(topic, b"x%d" % i, partition=2), timeout=10)
                   for i in range(3)]
    assert [(r.partition, r.offset) for r in replies] == [(2, 0), (2, 1), (2, 2)]


def test_publish_batch_of_1000_delivers_all_in_per_partition_order(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic(partitions=3)
    d = daemon_factory(_config(short_dir, broker))
    messages = [sidecar_pb2.BatchMessage(key=b"k%d" % (i % 10), value=b"%d" % i)
                for i in range(1000)]
    with d.channel() as ch:
        reply = _stub(ch).PublishBatch(sidecar_pb2.PublishBatchRequest(
            target="events", topic=topic, messages=messages), timeout=30)
    assert len(reply.results) == 1000
    assert [r.error for r in reply.results if r.error] == []
    acked = {(r.partition, r.offset): i for i, r in enumerate(reply.results)}
    read = broker.read_all(topic)
    assert len(read) == 1000
    for m in read:
        i = acked[(m.partition() or 0, m.offset() or 0)]
        assert (m.key(), m.value()) == (b"k%d" % (i % 10), b"%d" % i)
        assert {"correlation-id", "request-id", "traceparent"} <= {h for h, _ in m.headers() or []}
    for partition in {m.partition() for m in read}:
        order = [int(m.value() or b"") for m in read if m.partition() == partition]
        assert order == sorted(order)


def test_caller_mistakes_get_the_contract_codes_and_a_bad_batch_message_fails_alone(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic()
    d = daemon_factory(_config(short_dir, broker, max_message_bytes="1KiB"))
    cases = [
        (_request("other"), grpc.StatusCode.PERMISSION_DENIED),
        (_request(""), grpc.StatusCode.INVALID_ARGUMENT),
        (_request(topic, b"x" * 2000), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (_request(topic, partition=-3), grpc.StatusCode.INVALID_ARGUMENT),
        (_request(topic, target="nope"), grpc.StatusCode.NOT_FOUND),
        (_request(topic, target="grpc-up"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, expected in cases:
        code, details = _code(d, request)
        assert code is expected, (request, details)
        assert repr(request.target) in details
    messages = [sidecar_pb2.BatchMessage(value=v) for v in (b"a", b"x" * 2000, b"c")]
    with d.channel() as ch:
        reply = _stub(ch).PublishBatch(sidecar_pb2.PublishBatchRequest(
            target="events", topic=topic, messages=messages), timeout=10)
        with pytest.raises(grpc.RpcError) as denied:
            _stub(ch).PublishBatch(sidecar_pb2.PublishBatchRequest(
                target="events", topic="other", messages=messages), timeout=10)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert [bool(r.error) for r in reply.results] == [False, True, False]
    assert reply.results[1].error.startswith("RESOURCE_EXHAUSTED: target 'events'")
    assert sorted(m.value() or b"" for m in broker.read_all(topic)) == [b"a", b"c"]


def test_broker_outage_fails_within_the_deadline_then_publishing_resumes_without_restart(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic()
    d = daemon_factory(_config(short_dir, broker, breaker={"failures": 3, "reset": "1s"},
                               producer={"delivery_timeout": "3s"}))
    assert _code(d, _request(topic))[0] is grpc.StatusCode.OK
    broker.stop()
    for _ in range(3):
        # The daemon's own answer, before the caller's deadline (the caller's client would
        # say DEADLINE_EXCEEDED) and well before the 3 s delivery timeout.
        code, details = _code(d, _request(topic), timeout=1.0)
        assert code is grpc.StatusCode.UNAVAILABLE
        assert "target 'events' unreachable" in details
    code, details = _code(d, _request(topic), timeout=1.0)
    assert code is grpc.StatusCode.UNAVAILABLE and "circuit open" in details
    eventually(lambda: _target_health(d) == NOT_SERVING)
    broker.start()
    eventually(lambda: _code(d, _request(topic), timeout=2)[0] is grpc.StatusCode.OK, 30)
    assert _code(d, _request(topic))[0] is grpc.StatusCode.OK
    eventually(lambda: _target_health(d) == SERVING)


def test_health_and_readiness_follow_broker_reachability(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    config = _config(short_dir, broker, required=True)
    admin = f"127.0.0.1:{free_port()}"
    config["admin"] = {"address": admin}
    d = daemon_factory(config)
    eventually(lambda: _ready(admin) and _target_health(d) == SERVING)
    broker.stop()
    eventually(lambda: not _ready(admin) and _target_health(d) == NOT_SERVING, 20)
    broker.start()
    eventually(lambda: _ready(admin) and _target_health(d) == SERVING, 20)


def test_full_producer_queue_is_resource_exhausted(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic()
    config = _config(short_dir, broker,
                     producer={"config": {"queue.buffering.max.messages": "1"}})
    config["drain_timeout"] = "500ms"  # the queued message cannot be flushed
    d = daemon_factory(config)
    broker.stop()
    assert _code(d, _request(topic), timeout=0.5)[0] is grpc.StatusCode.UNAVAILABLE
    code, details = _code(d, _request(topic), timeout=0.5)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "target 'events': producer queue full, try again later"


def test_sigterm_with_500_publishes_in_flight_keeps_every_acknowledged_one_exactly_once(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic(partitions=3)
    # A longer linger keeps more publishes waiting on the broker when SIGTERM lands.
    d = daemon_factory(_config(short_dir, broker, producer={"linger": "20ms"}))
    with d.channel() as ch:
        stub = _stub(ch)
        calls = [stub.Publish.future(_request(topic, b"m%d" % i), timeout=20)
                 for i in range(500)]
        calls[0].result()
        acked_before = sum(1 for c in calls if c.done() and c.exception() is None)
        d.signal(signal.SIGTERM)
        acked: dict[bytes, tuple[int, int]] = {}
        for i, c in enumerate(calls):
            if c.exception() is None:
                acked[b"m%d" % i] = (c.result().partition, c.result().offset)
            else:
                assert c.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert d.wait() == 0
    assert len(acked) > acked_before  # calls in flight at SIGTERM were answered
    read = broker.read_all(topic)
    assert [v for v, n in Counter(m.value() for m in read).items() if n > 1] == []
    where = {m.value(): (m.partition(), m.offset()) for m in read}
    assert {v: where.get(v) for v in acked} == acked


def test_cli_publish_prints_partition_and_offset(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic()
    d = daemon_factory(_config(short_dir, broker))
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "publish", "--socket", d.socket, "events", topic,
         "--key", "k", "--value", "hello", "-H", "x-app: 1"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=True,
    )
    [message] = broker.read_all(topic)
    assert done.stdout.strip() == (
        f"topic={topic} partition={message.partition()} offset={message.offset()} "
        f"request_id={dict(message.headers() or [])['request-id'].decode()} spooled=false")
    assert (message.key(), message.value()) == (b"k", b"hello")
    assert dict(message.headers() or [])["x-app"] == b"1"


def test_rejected_producer_config_stops_startup_without_echoing_values(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    secret = "hunter2-not-a-number"
    d = daemon_factory(_config(short_dir, broker, producer={"config": {
        "sasl.password": "hunter2", "linger.ms": secret}}), wait=False)
    assert d.wait() == 1
    log = d.log_path.read_text()
    assert "targets.events.producer" in log
    assert "hunter2" not in log


def test_a_topic_kafka_would_refuse_is_invalid_argument_naming_it_and_long_names_are_clipped(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    d = daemon_factory(_config(short_dir, broker, topics=["*"]))
    for topic in ("t-a\x00b", "\x00", "t-bad topic/!", ".", "..", "t-tö", "t-" + "x" * 300):
        code, details = _code(d, _request(topic))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (topic, details)
        assert "is not a Kafka topic name" in details and repr(topic[:20])[:-1] in details
        assert len(details) < 300  # the name is clipped
        with d.channel() as ch, pytest.raises(grpc.RpcError) as batch:
            _stub(ch).PublishBatch(sidecar_pb2.PublishBatchRequest(
                target="events", topic=topic, messages=[sidecar_pb2.BatchMessage(value=b"v")]),
                timeout=5)
        assert batch.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # A 100 KB target or service name: NOT_FOUND with the name clipped, a status the caller
    # can read (grpcio refuses trailers over 16 KiB, and reported RESOURCE_EXHAUSTED).
    long = "n" * 100_000
    code, details = _code(d, _request("t-a", target=long))
    assert code is grpc.StatusCode.NOT_FOUND and len(details) < 200, details
    with d.channel() as ch, pytest.raises(grpc.RpcError) as health:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=long),
                                            timeout=5)
    assert health.value.code() is grpc.StatusCode.NOT_FOUND
    assert len(health.value.details()) < 200
