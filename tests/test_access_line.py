"""The access line of every kind of call: what the caller got, what the upstream
answered (HTTP status, gRPC status, Kafka partition and offset), where it went, bytes
each way, attempts and Envoy-style response flags; log records in the OpenTelemetry
log data model's names, `span_id` beside `trace_id`, and journald priorities."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import Daemon, Upstream, basic_config, eventually
from tests.http_upstream import HttpUpstream, http_config, http_upstream  # noqa: F401
from tests.kafka_broker import Broker, broker  # noqa: F401

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = ("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01")


def _one_call(d: Daemon) -> dict[str, Any]:
    (line,) = eventually(lambda: d.access() or None)
    return line


def test_an_http_404_line_says_404_with_the_upstream_bytes_and_no_flag(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    http_upstream: HttpUpstream,  # noqa: F811
) -> None:
    d = daemon_factory(http_config(str(short_dir / "app.sock"), http_upstream.url))
    with d.channel() as ch:
        reply = sidecar_pb2_grpc.HttpProxyStub(ch).Call(sidecar_pb2.HttpRequest(
            target="web", method="POST", path="/status/404", body=b"12345"),
            metadata=[TRACEPARENT], timeout=5)
    assert reply.status == 404
    line = _one_call(d)
    assert (line["sidecar.status"], line["rpc.grpc.status_code"]) == ("OK", 0)  # the caller's
    assert line["http.response.status_code"] == 404 == line["sidecar.upstream.status_code"]
    assert line["http.request.method"] == "POST"
    assert (line["server.address"], line["server.port"]) == ("127.0.0.1", http_upstream.port)
    assert line["sidecar.request.bytes"] == 5
    assert line["sidecar.response.bytes"] == len(reply.body) > 0
    assert (line["sidecar.attempts"], line["sidecar.response_flags"]) == (1, "-")
    assert (line["rpc.service"], line["rpc.method"]) == ("sidecar.v1.HttpProxy", "Call")
    assert line["sidecar.target"] == "web" and line["sidecar.listener"] == "app"
    # The log data model's fields: the ids of the call's trace and of the daemon's span.
    assert line["trace_id"] == TRACE_ID and re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
    assert line["span_id"] != "b7ad6b7169203331"
    assert (line["severity_text"], line["severity_number"]) == ("INFO", 9)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])


def test_a_proxied_grpc_line_carries_the_upstream_status_bytes_and_retries(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream))
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Flaky")(b"x" * 100, metadata=[("fail-times", "1")],
                                           timeout=5)
        with pytest.raises(grpc.RpcError):
            ch.unary_unary("/test.Echo/Fail")(b"y", metadata=[("fail-code", "NOT_FOUND")],
                                              timeout=5)
    retried, failed = eventually(lambda: d.access() if len(d.access()) == 2 else None)
    assert (retried["rpc.service"], retried["rpc.method"]) == ("test.Echo", "Flaky")
    assert retried["sidecar.attempts"] == 2 and retried["sidecar.response_flags"] == "-"
    assert retried["sidecar.upstream.status_code"] == 0
    assert retried["sidecar.request.bytes"] == 105  # one gRPC message: 5 + 100
    assert retried["sidecar.response.bytes"] == 105
    assert retried["server.address"] == upstream.socket_path and "server.port" not in retried
    # The upstream's own NOT_FOUND: passed on, no flag (the daemon did not cause it).
    assert failed["sidecar.status"] == "NOT_FOUND" and failed["rpc.grpc.status_code"] == 5
    assert failed["sidecar.upstream.status_code"] == 5
    assert failed["sidecar.response_flags"] == "-"


def test_upstream_connect_failure_after_retries_is_uf_and_urx(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
) -> None:
    config = basic_config(short_dir, None)
    config["targets"] = {"gone": {"kind": "grpc", "address": f"unix://{short_dir}/no.sock",
                                  "retry": {"attempts": 2, "backoff": {"base": "1ms"}}}}
    config["listeners"][0]["default_target"] = "gone"
    d = daemon_factory(config)
    with d.channel() as ch, pytest.raises(grpc.RpcError):
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    line = _one_call(d)
    assert line["sidecar.status"] == "UNAVAILABLE"
    assert line["sidecar.response_flags"] == "UF,URX" and line["sidecar.attempts"] == 2
    assert "sidecar.upstream.status_code" not in line  # no upstream ever answered


def test_circuit_open_is_uo(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"]["breaker"] = {"failures": 1, "reset": "60s"}
    config["targets"]["up"]["retry"] = {"attempts": 1}
    d = daemon_factory(config)
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    with d.channel() as ch:
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                ch.unary_unary("/test.Echo/Flaky")(b"x", timeout=5)
    tripped, refused = eventually(lambda: d.access() if len(d.access()) == 2 else None)
    assert tripped["sidecar.response_flags"] == "-"  # the upstream's own UNAVAILABLE
    assert tripped["sidecar.upstream.status_code"] == 14
    assert refused["sidecar.response_flags"] == "UO" and refused["sidecar.attempts"] == 0


def test_rate_limited_is_rl(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream,
                                    rate_limit={"rate": "1/m", "burst": 1}))
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        with pytest.raises(grpc.RpcError) as refused:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    served, limited = eventually(lambda: d.access() if len(d.access()) == 2 else None)
    assert served["sidecar.response_flags"] == "-"
    assert limited["sidecar.response_flags"] == "RL" and limited["sidecar.attempts"] == 0


def test_caller_cancel_is_dc_and_the_deadline_is_ut(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"].update(retry={"attempts": 1}, timeout="300ms")
    d = daemon_factory(config)
    with d.channel() as ch:
        future = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=60)
        eventually(lambda: upstream.seen)
        future.cancel()
        eventually(lambda: d.access())
        with pytest.raises(grpc.RpcError) as late:
            # No deadline of the caller's: the target's timeout is the daemon's own.
            ch.unary_unary("/test.Echo/Slow")(b"x", metadata=[("sleep-ms", "3000")])
    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    cancelled, timed_out = eventually(lambda: d.access() if len(d.access()) == 2 else None)
    assert cancelled["sidecar.status"] == "CANCELLED"
    assert cancelled["sidecar.response_flags"] == "DC"
    assert timed_out["sidecar.status"] == "DEADLINE_EXCEEDED"
    assert timed_out["sidecar.response_flags"] == "UT"


def test_a_publish_line_carries_its_partition_and_offset(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker,  # noqa: F811
) -> None:
    topic = broker.create_topic(partitions=1)
    config = basic_config(short_dir, None)
    config["targets"] = {"events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap]}}
    d = daemon_factory(config)
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.PublisherStub(ch)
        stub.Publish(sidecar_pb2.PublishRequest(target="events", topic=topic, key=b"k",
                                                value=b"v"), timeout=10)
        reply = stub.Publish(sidecar_pb2.PublishRequest(target="events", topic=topic,
                                                        key=b"kk", value=b"vvv"), timeout=10)
    line = eventually(lambda: d.access()[1] if len(d.access()) == 2 else None)
    assert line["messaging.destination.name"] == topic
    assert line["messaging.destination.partition.id"] == str(reply.partition)
    assert line["messaging.kafka.offset"] == reply.offset == 1
    assert line["sidecar.request.bytes"] == 5 and line["sidecar.attempts"] == 1
    host, port = broker.bootstrap.rsplit(":", 1)
    assert (line["server.address"], line["server.port"]) == (host, int(port))


def test_a_publish_batch_line_counts_its_messages_and_their_bytes(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker,  # noqa: F811
) -> None:
    topic = broker.create_topic(partitions=1)
    config = basic_config(short_dir, None)
    config["targets"] = {"events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                                    "max_message_bytes": 100}}
    d = daemon_factory(config)
    messages = [sidecar_pb2.BatchMessage(key=b"k" * i, value=b"v" * 10) for i in range(3)]
    messages.append(sidecar_pb2.BatchMessage(value=b"x" * 200))  # over max_message_bytes
    with d.channel() as ch:
        reply = sidecar_pb2_grpc.PublisherStub(ch).PublishBatch(sidecar_pb2.PublishBatchRequest(
            target="events", topic=topic, messages=messages), timeout=10)
    assert [bool(r.error) for r in reply.results] == [False, False, False, True]
    line = eventually(lambda: d.access()[0] if d.access() else None)
    assert line["messaging.batch.message_count"] == 4
    assert line["sidecar.messages.delivered"] == 3
    # Keys and values of every message of the call, the refused one included.
    assert line["sidecar.request.bytes"] == (0 + 1 + 2) + 3 * 10 + 200


def test_a_line_logged_within_a_call_has_its_trace_and_span_ids(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"]["breaker"] = {"failures": 1}
    d = daemon_factory(config)
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    with d.channel() as ch, pytest.raises(grpc.RpcError):
        ch.unary_unary("/test.Echo/Flaky")(
            b"x", metadata=[("x-correlation-id", "corr-9"), TRACEPARENT], timeout=5)
    d.stop()
    (opened,) = [r for r in d.records() if r["body"] == "breaker open"]
    (call,) = d.access()
    assert opened["severity_text"] == "WARN" and opened["severity_number"] == 13
    assert opened["scope"] == "sidecar.resilience"
    assert opened["trace_id"] == call["trace_id"] == TRACE_ID
    assert opened["span_id"] == call["span_id"]
    assert opened["sidecar.correlation_id"] == call["sidecar.correlation_id"] == "corr-9"


def _journal_of(log: Path) -> str:
    log.touch()
    st = os.stat(log)
    return f"{st.st_dev}:{st.st_ino}"


def test_under_journald_each_line_starts_with_its_priority(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    """systemd says stderr is the journal through JOURNAL_STREAM (device:inode): each
    line then starts with its syslog priority, `<6>` info, `<4>` warning, `<3>` error."""
    config = basic_config(short_dir, upstream)
    config["targets"]["up"]["breaker"] = {"failures": 1}
    stream = _journal_of(short_dir / "daemon0.log")  # the log the factory opens first
    d = daemon_factory(config, env={"JOURNAL_STREAM": stream})
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    with d.channel() as ch, pytest.raises(grpc.RpcError):
        ch.unary_unary("/test.Echo/Flaky")(b"x", timeout=5)
    d.stop()
    lines = [ln for ln in d.log_lines() if ln.startswith("<")]
    assert lines and len(lines) == len([ln for ln in d.log_lines() if "{" in ln])
    by_priority: dict[int, set[str]] = {}
    for ln in lines:
        match = re.match(r"<(\d)>(\{.*\})$", ln)
        assert match, ln
        record = orjson.loads(match[2])
        by_priority.setdefault(int(match[1]), set()).add(record["severity_text"])
    assert by_priority[6] == {"INFO"} and by_priority[4] == {"WARN"}


def test_a_journal_stream_that_is_not_stderr_adds_no_priority(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    """A daemon started under systemd whose stderr was redirected keeps JOURNAL_STREAM,
    but its stderr is another file: plain JSON lines."""
    other = _journal_of(short_dir / "elsewhere.log")
    d = daemon_factory(basic_config(short_dir, upstream), env={"JOURNAL_STREAM": other})
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    d.stop()
    assert all(ln.startswith("{") for ln in d.log_lines() if "{" in ln)
    assert d.access()
