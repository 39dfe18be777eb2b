"""No log line carries a `${VAR}` value: librdkafka's own lines at debug level (against an
unreachable address and a real broker), and the aiohttp and grpc paths."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import Daemon, basic_config, eventually, free_port
from tests.kafka_broker import Broker, broker

__all__ = ["broker"]  # the fixture, imported for pytest


def _records(d: Daemon) -> list[dict[str, Any]]:
    return d.records()


def _kafka_lines(d: Daemon) -> list[str]:
    """librdkafka's own lines, as the daemon logged them."""
    return [r["body"] for r in _records(d) if r["scope"] == "sidecar.kafka"
            and r["severity_text"] == "DEBUG" and "[sidecar-events#producer-" in r["body"]]


def _kafka_config(short_dir: Path, **producer: Any) -> dict[str, Any]:
    config = basic_config(short_dir, None)
    config["log"] = {"level": "debug"}
    config["targets"]["events"] = {
        "kind": "kafka", "bootstrap_servers": ["${KAFKA_BOOTSTRAP}"], "topics": ["t-*"],
        **({"producer": producer} if producer else {}),
    }
    return config


def test_librdkafka_connect_failures_at_debug_level_never_carry_the_bootstrap_value(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    port = str(free_port())
    value = f"127.0.0.1:{port}"
    d = daemon_factory(_kafka_config(short_dir), env={"KAFKA_BOOTSTRAP": value})
    lines = eventually(lambda: [m for m in _kafka_lines(d) if m.startswith("FAIL ")])
    assert "Connection refused" in lines[0] and "***" in lines[0]
    assert value not in d.log_path.read_text()
    assert not [m for m in _kafka_lines(d) if port in m or "127.0.0.1" in m]


def test_librdkafka_debug_lines_against_a_real_broker_never_carry_the_bootstrap_value(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic()
    config = _kafka_config(short_dir, config={"debug": "broker,metadata,protocol,msg"})
    d = daemon_factory(config, env={"KAFKA_BOOTSTRAP": broker.bootstrap})
    request = sidecar_pb2.PublishRequest(target="events", topic=topic, value=b"v")
    with d.channel() as ch:
        reply = sidecar_pb2_grpc.PublisherStub(ch).Publish(request, timeout=15)
    assert reply.topic == topic
    lines = eventually(lambda: len(_kafka_lines(d)) > 10 and _kafka_lines(d))
    assert any("***" in m for m in lines)
    assert broker.bootstrap not in d.log_path.read_text()
    assert not [m for m in lines if str(broker.port) in m or "127.0.0.1" in m]


def test_http_and_grpc_values_from_env_stay_out_of_logs_caller_errors_and_status(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    admin = free_port()
    web_url = f"http://127.0.0.1:{free_port()}"
    key = "key-5e0c7d1b9a24"
    grpc_socket = str(short_dir / "private-orders-7f3a.sock")
    config = basic_config(short_dir, None)
    config["log"] = {"level": "debug"}
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    config["targets"] = {
        "web": {"kind": "http", "base_url": "${WEB_URL}", "headers": {"X-Api-Key": "${WEB_KEY}"},
                "retry": {"attempts": 1}},
        "orders": {"kind": "grpc", "address": "unix://${ORDERS_SOCKET}",
                   "retry": {"attempts": 1}},
    }
    d = daemon_factory(config, env={"WEB_URL": web_url, "WEB_KEY": key,
                                    "ORDERS_SOCKET": grpc_socket})
    secrets = (web_url, web_url.split("//")[1], key, grpc_socket)

    with d.channel() as ch, pytest.raises(grpc.RpcError) as http_error:
        sidecar_pb2_grpc.HttpProxyStub(ch).Call(
            sidecar_pb2.HttpRequest(target="web", method="GET", path="/x"), timeout=10)
    with d.channel() as ch, pytest.raises(grpc.RpcError) as grpc_error:
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("sidecar-target", "orders")],
                                           timeout=10)
    for error in (http_error.value, grpc_error.value):
        assert error.code() is grpc.StatusCode.UNAVAILABLE and "unreachable" in error.details()
        assert not [s for s in secrets if s in error.details()]

    warned = eventually(lambda: {r["target"] for r in _records(d) if r["severity_text"] == "WARN"
                                 and r["body"] == "target unreachable"} >= {"web", "orders"})
    assert warned
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as reply:
        status = reply.read().decode()
    logged = d.log_path.read_text()
    assert not [s for s in secrets if s in logged or s in status]
