"""GET /metrics by the semantic conventions: labels, bounds, process metrics, OpenMetrics."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.config_loader import parse_config
from sidecar.telemetry import metrics as metrics_module
from sidecar.telemetry.metrics import Metrics
from tests.conftest import Daemon, Upstream, basic_config, free_port
from tests.http_upstream import HttpUpstream, http_upstream  # noqa: F401  (fixture)
from tests.kafka_broker import Broker, broker  # noqa: F401  (fixture)
from tests.otlp_receiver import Receiver

DURATION = "rpc_client_call_duration_seconds"


def _get(port: int, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.headers["Content-Type"], r.read().decode()


def _samples(text: str) -> list[Any]:
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def _daemon(daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
            **telemetry: Any) -> tuple[Daemon, int]:
    port = free_port()
    config = basic_config(short_dir, upstream)
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    if telemetry:
        config["telemetry"] = telemetry
    return daemon_factory(config, env={"OTEL_BSP_SCHEDULE_DELAY": "50"}), port


def test_grpc_durations_carry_the_rpc_and_server_labels_and_no_scope_labels(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    d, port = _daemon(daemon_factory, short_dir, upstream)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"ok", timeout=5)
    content_type, text = _get(port)
    assert content_type.startswith("text/plain")
    counts = [s for s in _samples(text) if s.name == f"{DURATION}_count"]
    assert len(counts) == 1
    labels = counts[0].labels
    assert labels["rpc_system"] == "grpc"
    assert labels["rpc_service"] == "test.Echo"
    assert labels["rpc_method"] == "Unary"
    assert labels["rpc_grpc_status_code"] == "0"
    assert labels["sidecar_target"] == "up"
    assert labels["server_address"]  # the target's configured address
    assert "otel_scope_name" not in text and "otel_scope_" not in text
    names = {s.name for s in _samples(text)}
    assert "process_resident_memory_bytes" in names
    assert "process_cpu_seconds_total" in names
    assert " # {" not in text  # no exemplars in Prometheus text


def test_proxied_method_labels_are_capped_per_target(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    d, port = _daemon(daemon_factory, short_dir, upstream)
    extra = 5
    with d.channel() as ch:
        for i in range(metrics_module.MAX_METHODS + extra):
            # The upstream does not know them: still a call, still labelled.
            with contextlib.suppress(grpc.RpcError):
                ch.unary_unary(f"/test.Random/M{i}")(b"x", timeout=5)
    _, text = _get(port)
    counts = [s for s in _samples(text) if s.name == f"{DURATION}_count"]
    methods = {s.labels["rpc_method"] for s in counts}
    assert "other" in methods
    assert len(methods - {"other"}) == metrics_module.MAX_METHODS
    assert sum(s.value for s in counts if s.labels["rpc_method"] == "other") == extra


def test_topic_labels_keep_configured_names_and_cap_glob_matches() -> None:
    config = parse_config({"listeners": [{"name": "app", "socket": "/run/s/app.sock"}],
                           "targets": {"k": {"kind": "kafka", "bootstrap_servers": ["b:9092"],
                                             "topics": ["orders", "events.*"]}}}, env={})
    policy = SimpleNamespace(target=config.targets["k"], server=("broker", 9092))
    m = Metrics(lambda: {"k": policy}, {})  # type: ignore[arg-type, dict-item]
    try:
        assert m.topic_label("k", "orders") == "orders"
        assert m.topic_label("k", "nope") == "other"
        labels = [m.topic_label("k", f"events.{i}")
                  for i in range(metrics_module.MAX_TOPICS + 3)]
        assert labels[:metrics_module.MAX_TOPICS] == [
            f"events.{i}" for i in range(metrics_module.MAX_TOPICS)]
        assert labels[metrics_module.MAX_TOPICS:] == ["other"] * 3
        assert m.topic_label("k", "orders") == "orders"  # configured: never capped
        attrs = m.labels("k", "kafka", "/sidecar.v1.Publisher/Publish",
                         {"messaging.system": "kafka", "messaging.destination.name": "x"})
        assert attrs["messaging.destination.name"] == "other"
        assert attrs["messaging.operation.type"] == "send"
        assert (attrs["server.address"], attrs["server.port"]) == ("broker", 9092)
    finally:
        m.shutdown()


def test_openmetrics_on_request_with_an_exemplar_of_the_traced_call(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    receiver: Receiver,
) -> None:
    d, port = _daemon(daemon_factory, short_dir, upstream,
                      tracing={"otlp_endpoint": receiver.endpoint})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(
            b"x", metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")], timeout=5)
    content_type, text = _get(port, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    exemplars = [s.exemplar for f in openmetrics_families(text) for s in f.samples
                 if s.name == f"{DURATION}_bucket" and s.exemplar is not None]
    assert [e.labels["trace_id"] for e in exemplars] == [trace_id]
    assert len(exemplars[0].labels["span_id"]) == 16
    _, plain = _get(port)
    assert _samples(plain) and " # {" not in plain


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_prometheus_text(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    d, port = _daemon(daemon_factory, short_dir, upstream)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"ok", timeout=5)
    # promtool's `check metrics` reads the Prometheus text format only (OpenMetrics' `info`
    # type is unknown to it); the OpenMetrics output is checked by prometheus_client's parser.
    done = subprocess.run(["promtool", "check", "metrics"], input=_get(port)[1], text=True,
                          capture_output=True, timeout=30)
    # Lint remarks (units, counters' names) are not errors of the format.
    assert "error" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_http_and_kafka_durations_carry_their_conventions_labels_from_a_real_daemon(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    http_upstream: HttpUpstream, broker: Broker,  # noqa: F811
) -> None:
    topic = broker.create_topic(partitions=1)
    port = free_port()
    config = basic_config(short_dir, None)
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    config["targets"] = {
        "web": {"kind": "http", "base_url": http_upstream.url},
        "events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                   "topics": [topic, "t-*"]},
    }
    d = daemon_factory(config)
    with d.channel() as ch:
        sidecar_pb2_grpc.HttpProxyStub(ch).Call(sidecar_pb2.HttpRequest(
            target="web", method="GET", path="/status/404"), timeout=5)
        publisher = sidecar_pb2_grpc.PublisherStub(ch)
        for value in (b"v", b"vvv"):  # the second adds to counters the first looked up
            publisher.Publish(sidecar_pb2.PublishRequest(
                target="events", topic=topic, key=b"k", value=value), timeout=10)
    samples = _samples(_get(port)[1])
    sent = {s.name: s.value for s in samples if s.name.startswith(
        ("messaging_client_sent_messages", "sidecar_kafka_sent_bytes"))
        and s.labels.get("messaging_destination_name") == topic}
    assert sorted(sent.values()) == [2.0, 4.0], sent  # two messages, of 1 and 3 bytes
    (http,) = [s.labels for s in samples if s.name == "http_client_request_duration_seconds_count"]
    assert http["http_request_method"] == "GET"
    assert http["http_response_status_code"] == "404"
    assert (http["server_address"], http["server_port"]) == ("127.0.0.1",
                                                             str(http_upstream.port))
    assert http["sidecar_target"] == "web"
    (kafka,) = [s.labels for s in samples
                if s.name == "messaging_client_operation_duration_seconds_count"]
    assert kafka["messaging_system"] == "kafka"
    assert kafka["messaging_destination_name"] == topic  # a configured name, as it is
    assert kafka["messaging_operation_type"] == "send"
    host, kafka_port = broker.bootstrap.rsplit(":", 1)
    assert (kafka["server_address"], kafka["server_port"]) == (host, kafka_port)
    assert not any(k.startswith("otel_scope") for s in samples for k in s.labels)
