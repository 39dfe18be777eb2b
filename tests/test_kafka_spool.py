"""The Kafka spool over real processes: a real broker (tansu), the daemon as a process
killed with SIGKILL, and an independent consumer (aiokafka) reading what arrived."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.upstreams.kafka_spool import DRAIN_CHUNK
from tests.conftest import ROOT, Daemon, basic_config, eventually, free_port
from tests.kafka_broker import Broker

State = sidecar_pb2.PublishStatusResponse
KEYS = 10


def _config(short_dir: Path, broker: Broker, spool: Path, **target: Any) -> dict[str, Any]:
    config = basic_config(short_dir, None)
    config["admin"] = {"address": f"127.0.0.1:{free_port()}"}
    config["targets"] = {
        "events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                   "topics": ["t-*"], "timeout": "10s",
                   "spool": {"dir": str(spool), "max_bytes": "64MiB", "retention": "1h"},
                   **target},
    }
    return config


def _status(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data["targets"]["events"]["spool"]


def _ready(admin: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{admin}/readyz", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _publish_all(d: Daemon, topic: str, n: int, deadline: float = 10.0,
                 ) -> list[tuple[Any, float]]:
    """`n` Publish calls, key `k<i % KEYS>`, value `<i>`: (reply, seconds it took).
    The keys are published concurrently, each key's messages one after the other
    (order per key is the order of a caller that waits for each answer)."""
    replies: list[tuple[Any, float]] = [(None, 0.0)] * n
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.PublisherStub(ch)

        def one_key(k: int) -> None:
            for i in range(k, n, KEYS):
                started = time.monotonic()
                reply = stub.Publish(sidecar_pb2.PublishRequest(
                    target="events", topic=topic, key=b"k%d" % k, value=b"%d" % i),
                    timeout=deadline)
                replies[i] = (reply, time.monotonic() - started)

        with ThreadPoolExecutor(KEYS) as pool:
            list(pool.map(one_key, range(KEYS)))
    return replies


def _statuses(d: Daemon, ids: list[str]) -> list[Any]:
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.PublisherStub(ch)
        calls = [stub.Status.future(sidecar_pb2.PublishStatusRequest(
            target="events", request_id=i), timeout=10) for i in ids]
        return [c.result() for c in calls]


def _consume(broker: Broker, topic: str, at_least: int, timeout: float = 30.0) -> list[Any]:
    """Every record of `topic` read by aiokafka, once `at_least` have arrived and no more
    come for a moment."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    group_id=None)
        await consumer.start()
        got: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                records = [r for rs in batch.values() for r in rs]
                if records:
                    got += records
                    quiet_since = time.monotonic()
                elif len(got) >= at_least and time.monotonic() - quiet_since > 1.0:
                    break
        finally:
            await consumer.stop()
        return got

    return asyncio.run(read())


def _request_id(record: Any) -> str:
    return dict(record.headers)["request-id"].decode()


def _check_key_order(records: list[Any]) -> None:
    """Per key, values arrive in the order they were published."""
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_key[r.key].append(int(r.value))
    for key, values in by_key.items():
        firsts = list(dict.fromkeys(values))  # a duplicate repeats an earlier value
        assert firsts == sorted(firsts), f"key {key!r} out of order: {firsts[:20]}"


def _kill(d: Daemon) -> None:
    d.signal(signal.SIGKILL)
    d.wait(10)


def test_messages_spooled_while_brokers_are_down_survive_sigkill_and_are_delivered_in_order(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    broker = Broker(free_port())  # not started: the brokers are down
    spool = short_dir / "spool"
    topic = f"t-{uuid.uuid4().hex[:12]}"
    config = _config(short_dir, broker, spool)
    d = daemon_factory(config)
    d.wait_log("kafka brokers unreachable")
    assert _ready(d.admin or "") == 200  # spooling: degraded, not down

    replies = _publish_all(d, topic, 1000, deadline=10.0)
    assert all(r.spooled and r.partition == -1 and r.offset == -1 for r, _ in replies)
    assert max(t for _, t in replies) < 5.0, "answered well before the 10 s deadline"
    ids = [r.request_id for r, _ in replies]
    assert len(set(ids)) == 1000
    assert len(d.wait_log("kafka spooling messages")) == 1
    stats = _status(d.admin or "")
    assert stats["messages"] == 1000 and stats["bytes"] > 0 and stats["oldest_age_s"] >= 0
    assert {s.state for s in _statuses(d, ids[:10])} == {State.SPOOLED}
    _kill(d)

    broker.start()
    try:
        broker.create_topic(topic)
        again = daemon_factory(config)
        again.wait_log("kafka spool resumed")
        again.wait_log("kafka spool drained", timeout=30)
        records = _consume(broker, topic, 1000)
        assert sorted(_request_id(r) for r in records) == sorted(ids)  # all, once each
        _check_key_order(records)
        by_id = {_request_id(r): r for r in records}
        for rid, status in zip(ids, _statuses(again, ids), strict=True):
            assert status.state == State.DELIVERED, rid
            record = by_id[rid]
            assert (status.topic, status.partition, status.offset) == (
                topic, record.partition, record.offset)
        assert _status(again.admin or "")["messages"] == 0
    finally:
        broker.stop()


def test_a_crash_in_the_middle_of_draining_loses_nothing_and_duplicates_at_most_a_chunk(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    broker = Broker(free_port())
    spool = short_dir / "spool"
    topic = f"t-{uuid.uuid4().hex[:12]}"
    # A slow producer (50 ms linger a batch) so the drain is still going when killed.
    config = _config(short_dir, broker, spool, producer={"linger": "50ms"})
    d = daemon_factory(config)
    d.wait_log("kafka brokers unreachable")
    ids = [r.request_id for r, _ in _publish_all(d, topic, 3000)]
    _kill(d)

    broker.start()
    try:
        broker.create_topic(topic)
        draining = daemon_factory(config)
        admin = draining.admin or ""
        left = eventually(lambda: _left_mid_drain(admin), timeout=30, interval=0.005)
        _kill(draining)
        assert 0 < left < 3000

        again = daemon_factory(config)
        again.wait_log("kafka spool drained", timeout=30)
        records = _consume(broker, topic, 3000)
        counts = Counter(_request_id(r) for r in records)
        assert set(counts) == set(ids), "nothing answered is lost"
        duplicates = sum(n - 1 for n in counts.values())
        # Only the messages whose acknowledgement was in flight at the kill come twice.
        assert duplicates <= DRAIN_CHUNK, duplicates
        print(f"crash mid-drain: {left} left, {duplicates} duplicates")
        _check_key_order(records)
    finally:
        broker.stop()


def test_a_stop_in_the_middle_of_draining_keeps_the_rest_and_duplicates_nothing(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    """SIGTERM lets the drain step under way record its acknowledgements; the rest stays
    in the spool for the next start."""
    broker = Broker(free_port())
    topic = f"t-{uuid.uuid4().hex[:12]}"
    config = _config(short_dir, broker, short_dir / "spool", producer={"linger": "50ms"})
    d = daemon_factory(config)
    d.wait_log("kafka brokers unreachable")
    ids = [r.request_id for r, _ in _publish_all(d, topic, 3000)]
    assert d.stop() == 0

    broker.start()
    try:
        broker.create_topic(topic)
        draining = daemon_factory(config)
        admin = draining.admin or ""
        eventually(lambda: _left_mid_drain(admin), timeout=30, interval=0.005)
        assert draining.stop() == 0
        assert Path(config["targets"]["events"]["spool"]["dir"], "spool.db").exists()
        again = daemon_factory(config)
        again.wait_log("kafka spool resumed")
        again.wait_log("kafka spool drained", timeout=30)
        records = _consume(broker, topic, 3000)
        assert sorted(_request_id(r) for r in records) == sorted(ids), "once each"
    finally:
        broker.stop()


def _left_mid_drain(admin: str) -> int:
    left = int(_status(admin)["messages"])
    assert 0 < left < 3000, left
    return left


def test_a_full_spool_refuses_with_resource_exhausted_naming_the_target_and_the_key(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    broker = Broker(free_port())
    config = _config(short_dir, broker, short_dir / "spool")
    config["targets"]["events"]["spool"]["max_bytes"] = "4KiB"
    config["targets"]["events"]["required"] = True
    d = daemon_factory(config)
    d.wait_log("kafka brokers unreachable")
    assert _ready(d.admin or "") == 200  # required, down, but the spool takes its messages
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.PublisherStub(ch)
        request = sidecar_pb2.PublishRequest(target="events", topic="t-full", value=b"x" * 1000)
        spooled = 0
        with pytest.raises(grpc.RpcError) as refused:
            for _ in range(10):
                assert stub.Publish(request, timeout=5).spooled
                spooled += 1
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "target 'events'" in refused.value.details()
    assert "spool.max_bytes" in refused.value.details()
    assert 1 <= spooled < 5
    # A full spool no longer absorbs the outage: the target is down again.
    assert eventually(lambda: _ready_code(d), timeout=10) == 503


def _ready_code(d: Daemon) -> int:
    code = _ready(d.admin or "")
    assert code == 503
    return code


def test_an_unwritable_spool_dir_fails_check_config_and_start_with_the_key_path(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    blocker = short_dir / "file"
    blocker.write_text("not a directory")
    config = _config(short_dir, Broker(free_port()), blocker / "spool")
    config["targets"]["events"]["required"] = True
    d = daemon_factory(config, wait=False)
    assert d.wait(15) == 1
    assert any("targets.events.spool.dir" in ln and "cannot be written" in ln
               for ln in d.log_lines()), d.log_lines()
    checked = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config", str(d.config_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert checked.returncode == 1
    assert "targets.events.spool.dir: cannot be written" in checked.stderr


def test_a_second_daemon_on_the_same_spool_dir_fails_to_start_with_the_key_path(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    config = _config(short_dir, Broker(free_port()), short_dir / "spool")
    daemon_factory(config)
    second = dict(config, listeners=[{"name": "app", "socket": str(short_dir / "b.sock")}],
                  admin={"address": None})
    d = daemon_factory(second, wait=False)
    assert d.wait(15) == 1
    assert any("targets.events.spool.dir: cannot open the spool: in use" in ln
               for ln in d.log_lines()), d.log_lines()


def test_a_key_keeps_its_order_when_messages_queue_behind_spooled_ones(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    """Spooled while the brokers are away, then published while the spool drains: the
    later messages with the key go behind the spooled ones; other keys go straight."""
    broker = Broker(free_port())
    config = _config(short_dir, broker, short_dir / "spool", producer={"linger": "20ms"})
    topic = f"t-{uuid.uuid4().hex[:12]}"
    d = daemon_factory(config)
    d.wait_log("kafka brokers unreachable")
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.PublisherStub(ch)

        def publish(key: bytes, value: int) -> Any:
            return stub.Publish(sidecar_pb2.PublishRequest(
                target="events", topic=topic, key=key, value=b"%d" % value), timeout=10)

        assert all(publish(b"k", i).spooled for i in range(200))
        broker.start()
        try:
            broker.create_topic(topic, partitions=1, exist_ok=True)
            d.wait_log("kafka brokers reachable")
            later = [publish(b"k", i) for i in range(200, 260)]
            other = publish(b"other", 0)
            d.wait_log("kafka spool drained", timeout=30)
            records = _consume(broker, topic, 261)
        finally:
            broker.stop()
    assert any(r.spooled for r in later) or not later[0].spooled
    assert not other.spooled, "a key with nothing spooled goes straight to the brokers"
    values = [int(r.value) for r in sorted(records, key=lambda r: r.offset) if r.key == b"k"]
    assert list(dict.fromkeys(values)) == list(range(260))
