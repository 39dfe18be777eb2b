"""Spans by the OpenTelemetry semantic conventions, checked in an OTLP/gRPC receiver:
kinds, names, attributes and parent links for gRPC, HTTP and Kafka calls, and the
SDK's own environment variables (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_EXPORTER_OTLP_ENDPOINT) beside the config keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.telemetry.redaction import MASK
from tests.conftest import Daemon, Upstream, basic_config, eventually
from tests.http_upstream import HttpUpstream, http_config, http_upstream  # noqa: F401
from tests.kafka_broker import Broker, broker  # noqa: F401
from tests.otlp_receiver import (
    CLIENT,
    PRODUCER,
    SERVER,
    Receiver,
    attributes,
    running_receiver,
)

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = ("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")


def _traced(config: dict[str, Any], receiver: Receiver) -> dict[str, Any]:
    config["telemetry"] = {"tracing": {"otlp_endpoint": receiver.endpoint}}
    return config


def test_a_retried_grpc_call_is_a_server_span_over_one_client_span_per_attempt(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    receiver: Receiver,
) -> None:
    d = daemon_factory(_traced(basic_config(short_dir, upstream), receiver), env=FAST_EXPORT)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Flaky")(
            b"x", metadata=[TRACEPARENT, ("fail-times", "1")], timeout=5)
    d.stop()  # flushes the span processor
    (server,) = receiver.of_kind(SERVER)
    clients = sorted(receiver.of_kind(CLIENT), key=lambda s: s.start_time_unix_nano)
    assert server.name == "test.Echo/Flaky" and server.parent_span_id.hex() == CALLER_SPAN
    assert {s.trace_id.hex() for s in receiver.spans} == {TRACE_ID}
    shown = attributes(server)
    assert (shown["rpc.system"], shown["rpc.service"], shown["rpc.method"]) == (
        "grpc", "test.Echo", "Flaky")
    assert shown["rpc.grpc.status_code"] == 0  # an integer, as the conventions say
    assert shown["sidecar.target"] == "up" and shown["sidecar.listener"] == "app"
    assert len(clients) == 2 and all(c.parent_span_id == server.span_id for c in clients)
    first, second = (attributes(c) for c in clients)
    assert [c.name for c in clients] == ["test.Echo/Flaky"] * 2
    for attempt in (first, second):
        assert (attempt["rpc.system"], attempt["rpc.service"], attempt["rpc.method"]) == (
            "grpc", "test.Echo", "Flaky")
        assert attempt["server.address"] == upstream.socket_path
        assert "server.port" not in attempt  # a Unix socket has none
    assert (first["rpc.grpc.status_code"], second["rpc.grpc.status_code"]) == (14, 0)
    assert first["error.type"] == "UNAVAILABLE" and "error.type" not in second
    assert second["sidecar.attempt"] == 2
    assert clients[0].status.code == clients[0].status.STATUS_CODE_ERROR
    # What the upstream saw as its parent is each attempt's own span.
    sent = [str(s.metadata["traceparent"]).split("-")[2] for s in upstream.seen]
    assert sent == [c.span_id.hex() for c in clients]


def test_an_http_call_is_a_client_span_with_the_http_conventions(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    http_upstream: HttpUpstream, receiver: Receiver,  # noqa: F811 (a fixture)
) -> None:
    config = _traced(http_config(str(short_dir / "app.sock"), http_upstream.url), receiver)
    d = daemon_factory(config, env=FAST_EXPORT)
    with d.channel() as ch:
        reply = sidecar_pb2_grpc.HttpProxyStub(ch).Call(sidecar_pb2.HttpRequest(
            target="web", method="GET", path="/status/404?token=s3cr3t"),
            metadata=[TRACEPARENT], timeout=5)
    assert reply.status == 404
    d.stop()
    (server,) = receiver.of_kind(SERVER)
    (client,) = receiver.of_kind(CLIENT)
    assert server.name == "sidecar.v1.HttpProxy/Call"
    assert client.name == "GET" and client.parent_span_id == server.span_id
    shown = attributes(client)
    assert shown["http.request.method"] == "GET"
    assert shown["http.response.status_code"] == 404
    assert shown["error.type"] == "404"  # a 4xx answer fails the client span
    assert client.status.code == client.status.STATUS_CODE_ERROR
    assert (shown["server.address"], shown["server.port"]) == ("127.0.0.1", http_upstream.port)
    assert shown["url.full"] == f"{http_upstream.url}/status/404"  # the query left out
    assert "s3cr3t" not in str(receiver.spans)
    # The call itself succeeded: the caller got the answer.
    assert attributes(server)["rpc.grpc.status_code"] == 0


def test_a_publish_is_a_producer_span_with_the_messaging_conventions(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker,  # noqa: F811
    receiver: Receiver,
) -> None:
    topic = broker.create_topic(partitions=1)
    config = basic_config(short_dir, None)
    config["targets"] = {"events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap]}}
    d = daemon_factory(_traced(config, receiver), env=FAST_EXPORT)
    with d.channel() as ch:
        reply = sidecar_pb2_grpc.PublisherStub(ch).Publish(sidecar_pb2.PublishRequest(
            target="events", topic=topic, key=b"k", value=b"v"), metadata=[TRACEPARENT],
            timeout=10)
    d.stop()
    (server,) = receiver.of_kind(SERVER)
    (producer,) = receiver.of_kind(PRODUCER)
    assert not receiver.of_kind(CLIENT)
    assert server.name == "sidecar.v1.Publisher/Publish"
    assert producer.name == f"send {topic}" and producer.parent_span_id == server.span_id
    shown = attributes(producer)
    assert shown["messaging.system"] == "kafka"
    assert (shown["messaging.operation.name"], shown["messaging.operation.type"]) == (
        "send", "send")
    assert shown["messaging.destination.name"] == topic
    assert shown["messaging.destination.partition.id"] == str(reply.partition)
    assert shown["messaging.kafka.offset"] == reply.offset
    host, port = broker.bootstrap.rsplit(":", 1)
    assert (shown["server.address"], shown["server.port"]) == (host, int(port))


def test_the_sdk_environment_names_the_service_and_turns_tracing_on(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    receiver: Receiver,
) -> None:
    """No tracing key in the config: OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on, and
    the resource follows OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES."""
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           "OTEL_SERVICE_NAME": "orders-sidecar",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,team=payments"}
    d = daemon_factory(basic_config(short_dir, upstream), env=env)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    d.stop()
    assert len(receiver.of_kind(SERVER)) == 1
    resource = receiver.resources[0]
    assert resource["service.name"] == "orders-sidecar"
    assert resource["deployment.environment.name"] == "test" and resource["team"] == "payments"
    assert resource["service.version"]


def test_the_config_key_wins_over_the_environment_and_the_default_name_is_sidecar(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    receiver: Receiver,
) -> None:
    with running_receiver() as other:
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": other.endpoint}
        d = daemon_factory(_traced(basic_config(short_dir, upstream), receiver), env=env)
        with d.channel() as ch:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        d.stop()
        assert len(receiver.of_kind(SERVER)) == 1 and not other.spans
    assert receiver.resources[0]["service.name"] == "sidecar"


def test_otel_sdk_disabled_keeps_tracing_off(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    receiver: Receiver,
) -> None:
    env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
           "OTEL_SDK_DISABLED": "true"}
    d = daemon_factory(basic_config(short_dir, upstream), env=env)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    eventually(lambda: any('"body":"call"' in ln for ln in d.log_lines()))
    d.stop()
    assert not receiver.spans


def test_a_call_refused_by_the_daemon_ends_its_server_span_with_the_flag(
    daemon_factory: Callable[..., Daemon], short_dir: Path, receiver: Receiver,
) -> None:
    config = basic_config(short_dir, None)
    config["targets"] = {"gone": {"kind": "grpc", "address": f"unix://{short_dir}/no.sock",
                                  "retry": {"attempts": 1}}}
    config["listeners"][0]["default_target"] = "gone"
    d = daemon_factory(_traced(config, receiver), env=FAST_EXPORT)
    with d.channel() as ch, pytest.raises(grpc.RpcError) as failed:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    d.stop()
    (server,) = receiver.of_kind(SERVER)
    shown = attributes(server)
    assert shown["rpc.grpc.status_code"] == 14 and shown["error.type"] == "UNAVAILABLE"
    assert shown["sidecar.response_flags"] == "UF"
    (client,) = receiver.of_kind(CLIENT)
    assert attributes(client)["error.type"] == "UpstreamConnectError"


def test_an_address_from_a_var_is_blanked_in_spans(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    receiver: Receiver,
) -> None:
    """`${VAR}` values never leave the daemon: not in a span's server.address either."""
    config = _traced(basic_config(short_dir, upstream), receiver)
    config["targets"]["up"]["address"] = "unix://${UP_SOCKET}"
    d = daemon_factory(config, env={**FAST_EXPORT, "UP_SOCKET": upstream.socket_path})
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    d.stop()
    (client,) = receiver.of_kind(CLIENT)
    assert attributes(client)["server.address"] == MASK
    assert upstream.socket_path not in str(receiver.spans)
