"""kafka_wakeup.py: librdkafka signals its delivery reports on a pipe the loop watches. The
client handle is read from confluent-kafka's Producer object, not a public interface:
these tests pin that it is where the module reads it, and that a signalled report is
served with no poll timer involved, against a real broker."""

from __future__ import annotations

import asyncio
import select
import time

import pytest
from confluent_kafka import Producer

import sidecar.upstreams.kafka as kafka
from sidecar.config import KafkaTarget
from sidecar.config_loader import parse_config
from sidecar.upstreams.kafka_messages import OutgoingMessage
from sidecar.upstreams.kafka_wakeup import wakeup_for
from tests.kafka_broker import Broker, broker

__all__ = ["broker"]  # the fixture, imported for pytest


def _upstream(broker: Broker) -> kafka.KafkaUpstream:
    """A kafka target `k` on the test broker, its upstream not started yet."""
    config = parse_config({
        "listeners": [{"name": "a", "socket": "/tmp/a.sock"}],
        "targets": {"k": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap]}},
    }, env={})
    target = config.targets["k"]
    assert isinstance(target, KafkaTarget)
    return kafka.KafkaUpstream(target)


def test_the_handle_of_a_producer_is_found_and_checked() -> None:
    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "client.id": "sidecar-x"})
    wakeup = wakeup_for(producer, "sidecar-x")
    assert wakeup is not None  # the pinned confluent-kafka keeps rk where we read it
    wakeup.close()
    wakeup.close()  # twice is harmless
    # librdkafka's own name for the handle must match: another client id is refused.
    assert wakeup_for(producer, "sidecar-other") is None
    assert wakeup_for(object(), "sidecar-x") is None  # not a Producer: never read


def test_a_delivery_report_is_signalled_on_the_pipe(broker: Broker) -> None:
    topic = broker.create_topic(partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "client.id": "sidecar-w"})
    wakeup = wakeup_for(producer, "sidecar-w")
    assert wakeup is not None
    reports: list[object] = []
    try:
        producer.produce(topic, b"v", on_delivery=lambda err, msg: reports.append(err))
        deadline = time.monotonic() + 15
        while not reports:  # never poll before the pipe says there is something to serve
            readable, _, _ = select.select([wakeup.fd], [], [], max(deadline - time.monotonic(), 0))
            assert readable, "librdkafka never signalled its queue"
            wakeup.drain()
            producer.poll(0)
        assert reports == [None]
    finally:
        wakeup.close()
        producer.flush(5)


async def test_the_upstream_serves_reports_on_the_signal_not_the_timer(
    broker: Broker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A poll timer of 5 s: only the signal can deliver the report within the call's time.
    monkeypatch.setattr(kafka, "_BUSY_POLL", 5.0)
    monkeypatch.setattr(kafka, "_IDLE_POLL", 5.0)
    topic = broker.create_topic(partitions=1)
    upstream = _upstream(broker)
    await upstream.start()
    try:
        await asyncio.sleep(0.2)  # let the poller settle into its (long) idle wait
        started = time.monotonic()
        outcomes = await upstream.publish(
            topic, [OutgoingMessage(None, b"v", [], -1)], 1, time_left=4.0)
        assert outcomes.delivered == 1 and not outcomes.errors
        assert time.monotonic() - started < 4.0
    finally:
        await upstream.close(1.0)
    assert upstream._wakeups == {}  # closed: librdkafka writes to no pipe of ours


async def test_a_burst_of_reports_wakes_its_calls_a_few_per_loop_turn(broker: Broker) -> None:
    # 40 calls produced together to one partition are acknowledged by one produce request,
    # served by one poll(0). Woken all at once, the 40 answers would run in one loop turn
    # and the loop would read nothing new until the last was written; woken a few per turn,
    # it reads (and produces the callers' next calls) between them. Every call is answered.
    topic = broker.create_topic(partitions=1)
    upstream = _upstream(broker)
    await upstream.start()
    loop = asyncio.get_running_loop()
    turn = 0
    ticking = True

    def tick() -> None:  # runs once per loop turn while the burst is answered
        nonlocal turn
        turn += 1
        if ticking:
            loop.call_soon(tick)

    async def publish(i: int) -> int:
        outcomes = await upstream.publish(
            topic, [OutgoingMessage(None, b"v%d" % i, [], -1)], 1, time_left=10.0)
        assert outcomes.delivered == 1 and not outcomes.errors
        return turn

    try:  # a first call connects the producer, so the burst is acknowledged together
        await publish(-1)
        loop.call_soon(tick)
        turns = await asyncio.gather(*(publish(i) for i in range(40)))
    finally:
        ticking = False
        await upstream.close(1.0)
    per_turn = [turns.count(t) for t in sorted(set(turns))]
    assert per_turn[0] == kafka._FIRST_SLICE, per_turn  # the first answer goes out alone
    assert max(per_turn) <= kafka._WAKE_SLICE, per_turn
    assert len(per_turn) >= 40 // kafka._WAKE_SLICE, per_turn
    assert len(broker.read_all(topic)) == 41
