"""Publisher/Status by request id, the request ids Publish answers, and the spool as the
CLI, /status and /metrics show it; real daemon processes and a real broker (tansu)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import ROOT, Daemon, basic_config, free_port
from tests.kafka_broker import Broker, broker

__all__ = ["broker"]  # the fixture, imported for pytest

State = sidecar_pb2.PublishStatusResponse


def _config(short_dir: Path, broker: Broker, spool: bool = True, **target: Any,
            ) -> dict[str, Any]:
    config = basic_config(short_dir, None)
    config["admin"] = {"address": f"127.0.0.1:{free_port()}"}
    events: dict[str, Any] = {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                              "topics": ["t-*"], **target}
    if spool:
        events["spool"] = {"dir": str(short_dir / "spool"), "max_bytes": "16MiB",
                           "retention": "1h"}
    config["targets"] = {"events": events}
    return config


def _stub(ch: grpc.Channel) -> sidecar_pb2_grpc.PublisherStub:
    return sidecar_pb2_grpc.PublisherStub(ch)


def _status(d: Daemon, request_id: str, target: str = "events") -> Any:
    with d.channel() as ch:
        return _stub(ch).Status(sidecar_pb2.PublishStatusRequest(
            target=target, request_id=request_id), timeout=5)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=30)


def test_a_message_delivered_directly_answers_its_request_id_and_has_no_kept_status(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic()
    d = daemon_factory(_config(short_dir, broker))
    with d.channel() as ch:
        reply = _stub(ch).Publish(sidecar_pb2.PublishRequest(
            target="events", topic=topic, key=b"k", value=b"v"), timeout=10)
    assert not reply.spooled and reply.offset >= 0
    [message] = broker.read_all(topic)
    assert dict(message.headers() or [])["request-id"].decode() == reply.request_id
    assert _status(d, reply.request_id).state == State.UNKNOWN


def test_status_refuses_an_unknown_target_and_an_empty_request_id(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    d = daemon_factory(_config(short_dir, broker, spool=False))
    for target, request_id, code in (("nope", "x", grpc.StatusCode.NOT_FOUND),
                                      ("events", "", grpc.StatusCode.INVALID_ARGUMENT)):
        try:
            _status(d, request_id, target)
        except grpc.RpcError as e:
            assert e.code() == code, e.details()
            assert repr(target) in e.details()
        else:
            raise AssertionError("Status answered")
    assert _status(d, "anything").state == State.UNKNOWN  # no spool: nothing kept


def test_batch_messages_carry_their_own_request_ids_and_are_spooled_one_by_one(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    down = Broker(free_port())
    d = daemon_factory(_config(short_dir, down))
    d.wait_log("kafka brokers unreachable")
    messages = [sidecar_pb2.BatchMessage(key=b"k", value=b"%d" % i) for i in range(5)]
    with d.channel() as ch:
        reply = _stub(ch).PublishBatch(sidecar_pb2.PublishBatchRequest(
            target="events", topic="t-batch", messages=messages), timeout=10)
    ids = [r.request_id for r in reply.results]
    base = ids[0].rsplit(".", 1)[0]
    assert ids == [f"{base}.{i}" for i in range(5)]
    assert all(r.spooled and not r.error and r.offset == -1 for r in reply.results)
    assert {_status(d, i).state for i in ids} == {State.SPOOLED}

    down.start()
    try:
        down.create_topic("t-batch", exist_ok=True)
        d.wait_log("kafka spool drained", timeout=30)
        read = down.read_all("t-batch")
    finally:
        down.stop()
    assert [dict(m.headers() or [])["request-id"].decode() for m in read] == ids
    assert [m.value() for m in read] == [b"%d" % i for i in range(5)]
    for request_id, m in zip(ids, read, strict=True):
        assert _status(d, request_id) == State(
            state=State.DELIVERED, topic="t-batch", partition=m.partition(), offset=m.offset())


def test_the_cli_prints_the_request_id_and_spooled_and_publish_status_follows_it(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    down = Broker(free_port())
    d = daemon_factory(_config(short_dir, down))
    d.wait_log("kafka brokers unreachable")
    published = _cli("publish", "--socket", d.socket, "events", "t-cli", "--key", "k",
                     "--value", "hello")
    assert published.returncode == 0, published.stderr
    match = re.fullmatch(r"topic=t-cli partition=-1 offset=-1 request_id=(\S+) spooled=true",
                         published.stdout.strip())
    assert match, published.stdout
    request_id = match.group(1)
    waiting = _cli("publish-status", "--socket", d.socket, "events", request_id)
    assert waiting.returncode == 0 and waiting.stdout.strip() == "state=SPOOLED"

    shown = _cli("status", "--admin", d.admin or "")
    assert shown.returncode == 0, shown.stderr
    assert "KAFKA SPOOLS" in shown.stdout
    table = shown.stdout.split("KAFKA SPOOLS", 1)[1]
    row = next(ln for ln in table.splitlines() if ln.startswith("events "))
    assert row.split()[1] == "1", row  # one message waiting
    with urllib.request.urlopen(f"http://{d.admin}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    for name in ("sidecar_kafka_spool_messages", "sidecar_kafka_spool_bytes",
                 "sidecar_kafka_spool_oldest_age_seconds"):
        assert re.search(rf'^{name}\{{[^}}]*sidecar_target="events"[^}}]*\}} ', metrics,
                         re.MULTILINE), name
    assert re.search(r'^sidecar_kafka_spool_messages\{[^}]*\} 1\.0$', metrics, re.MULTILINE)

    down.start()
    try:
        down.create_topic("t-cli", exist_ok=True)
        d.wait_log("kafka spool drained", timeout=30)
        [message] = down.read_all("t-cli")
    finally:
        down.stop()
    done = _cli("publish-status", "--socket", d.socket, "events", request_id)
    assert done.stdout.strip() == (
        f"state=DELIVERED topic=t-cli partition={message.partition()} "
        f"offset={message.offset()}")


def test_messages_not_acknowledged_before_the_deadline_are_spooled_and_sent_once(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    """A frozen broker (SIGSTOP) keeps its connections but acknowledges nothing: calls are
    answered spooled a little before their deadline, librdkafka still holds the messages,
    and when the broker wakes their late acknowledgements settle the spooled copies:
    each message arrives once. The breaker opens on the way: later calls spool at once."""
    topic = broker.create_topic(partitions=1)
    d = daemon_factory(_config(short_dir, broker, breaker={"failures": 3}))
    with d.channel() as ch:
        stub = _stub(ch)

        def publish(i: int, timeout: float) -> tuple[Any, float]:
            started = time.monotonic()
            # A key each: a key with a message spooled would queue behind it at once.
            reply = stub.Publish(sidecar_pb2.PublishRequest(
                target="events", topic=topic, key=b"k%d" % i, value=b"%d" % i),
                timeout=timeout)
            return reply, time.monotonic() - started

        first, _ = publish(0, 10)
        assert not first.spooled
        assert broker.process is not None
        broker.process.send_signal(signal.SIGSTOP)
        try:
            held = [publish(i, 2.0) for i in range(1, 4)]
            fast = [publish(i, 2.0) for i in range(4, 7)]
        finally:
            broker.process.send_signal(signal.SIGCONT)
        for reply, took in held:
            assert reply.spooled and 1.0 < took < 2.0, took  # near, but before, the deadline
        for reply, took in fast:
            assert reply.spooled and took < 0.5, took  # the breaker is open: spooled at once
        d.wait_log("kafka spool drained", timeout=30)
    read = broker.read_all(topic)
    ids = [dict(m.headers() or [])["request-id"].decode() for m in read]
    spooled = [r.request_id for r, _ in held + fast]
    assert sorted(ids) == sorted([first.request_id, *spooled]), "each message exactly once"
    # Held ones went first (librdkafka had them), then the spooled ones, oldest first.
    assert [m.value() for m in read] == [b"%d" % i for i in range(7)]
    by_id = {i: m for i, m in zip(ids, read, strict=True)}
    for request_id in spooled:
        status = _status(d, request_id)
        assert (status.state, status.offset) == (State.DELIVERED, by_id[request_id].offset())


def test_a_reload_keeps_the_spool_and_its_statuses(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    down = Broker(free_port())
    config = _config(short_dir, down)
    d = daemon_factory(config)
    d.wait_log("kafka brokers unreachable")
    with d.channel() as ch:
        before = _stub(ch).Publish(sidecar_pb2.PublishRequest(
            target="events", topic="t-reload", key=b"k", value=b"0"), timeout=10)
    assert before.spooled
    config["targets"]["events"]["spool"]["max_bytes"] = "32MiB"
    d.config_path.write_text(__import__("yaml").safe_dump(config))
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded")
    assert _status(d, before.request_id).state == State.SPOOLED
    with d.channel() as ch:
        after = _stub(ch).Publish(sidecar_pb2.PublishRequest(
            target="events", topic="t-reload", key=b"k", value=b"1"), timeout=10)
    assert after.spooled
    down.start()
    try:
        down.create_topic("t-reload", exist_ok=True)
        d.wait_log("kafka spool drained", timeout=30)
        read = down.read_all("t-reload")
    finally:
        down.stop()
    assert [m.value() for m in read] == [b"0", b"1"]
    assert not any("Traceback" in ln for ln in d.log_lines())
