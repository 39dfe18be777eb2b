"""A PublishBatch larger than the producer's queue, against a real broker (tansu)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from confluent_kafka import Consumer, TopicPartition

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import Daemon, basic_config
from tests.kafka_broker import Broker, broker

__all__ = ["broker"]  # the fixture, imported for pytest

BATCH = 250_000
MiB = 1024 * 1024
REPLY_LIMIT = 64 * MiB  # the reply carries one result per message


def _config(short_dir: Path, broker: Broker, **producer: Any) -> dict[str, Any]:
    config = basic_config(short_dir, None)
    config["targets"] = {"events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                                    "topics": ["t-*"], "producer": producer}}
    return config


def _rss(d: Daemon, field: str = "VmRSS") -> int:
    """The daemon's resident memory (`VmHWM`: its peak so far), in bytes."""
    for line in Path(f"/proc/{d.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {d.process.pid}")


def _count(broker: Broker, topic: str, expected: int, timeout: float = 30.0) -> int:
    """Messages on the topic as an independent consumer reads them (stops at `expected`
    or when the topic has nothing more for a second)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap,
                         "group.id": f"g-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        seen, quiet_since = 0, time.monotonic()
        deadline = time.monotonic() + timeout
        while seen < expected and time.monotonic() < deadline:
            got = [m for m in consumer.consume(10_000, 0.2) if m.error() is None]
            seen += len(got)
            if got:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 1.0:
                break
        return seen
    finally:
        consumer.close()


def _publish_batch(d: Daemon, topic: str, n: int, timeout: float) -> Any:
    messages = [sidecar_pb2.BatchMessage(value=b"%08d" % i) for i in range(n)]
    request = sidecar_pb2.PublishBatchRequest(target="events", topic=topic, messages=messages)
    options = [("grpc.max_receive_message_length", REPLY_LIMIT)]
    with grpc.insecure_channel(f"unix:{d.socket}", options=options) as ch:
        return sidecar_pb2_grpc.PublisherStub(ch).PublishBatch(request, timeout=timeout)


def test_a_batch_of_250000_waits_for_queue_room_delivers_every_message_in_bounded_memory(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    """250,000 messages is 2.5 times librdkafka's default queue of 100,000: the batch
    must wait for delivery reports to free room instead of failing "queue full"."""
    topic = broker.create_topic(partitions=3)
    d = daemon_factory(_config(short_dir, broker))
    _publish_batch(d, topic, 10, timeout=10)  # producer connected, code paths loaded
    before = _rss(d)
    reply = _publish_batch(d, topic, BATCH, timeout=60)
    grown = _rss(d, "VmHWM") - before
    assert len(reply.results) == BATCH
    errors = [r.error for r in reply.results if r.error]
    assert errors == [], f"{len(errors)} failed, the first: {errors[:1]}"
    assert _count(broker, topic, BATCH + 10) == BATCH + 10
    assert grown < 128 * MiB, f"RSS grew {grown / MiB:.0f} MiB"


def test_a_batch_larger_than_a_small_queue_is_delivered_in_order_of_the_results(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    """A 50-message queue and a 2,000-message batch: the wait for room, many times over."""
    topic = broker.create_topic(partitions=1)
    d = daemon_factory(_config(short_dir, broker,
                               config={"queue.buffering.max.messages": "50"}))
    reply = _publish_batch(d, topic, 2000, timeout=30)
    assert [r.error for r in reply.results if r.error] == []
    assert [r.offset for r in reply.results] == list(range(2000))
    assert _count(broker, topic, 2000) == 2000


def test_messages_the_full_queue_never_took_before_the_deadline_fail_as_not_sent(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    """Brokers down and a 1-message queue that an earlier call's message holds: the batch
    waits for room until just before its deadline, then each message fails as never
    handed over (RESOURCE_EXHAUSTED: safe to send again), named, and the call answers."""
    topic = broker.create_topic(partitions=1)
    config = _config(short_dir, broker, config={"queue.buffering.max.messages": "1"})
    config["drain_timeout"] = "500ms"  # the queued message cannot be flushed
    d = daemon_factory(config)
    broker.stop()
    with grpc.insecure_channel(f"unix:{d.socket}") as ch, contextlib.suppress(grpc.RpcError):
        sidecar_pb2_grpc.PublisherStub(ch).Publish(sidecar_pb2.PublishRequest(
            target="events", topic=topic, value=b"stuck"), timeout=0.5)
    reply = _publish_batch(d, topic, 20, timeout=1.0)
    assert [r.error for r in reply.results] == [
        "RESOURCE_EXHAUSTED: target 'events': producer queue full, try again later"] * 20
