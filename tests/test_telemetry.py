"""Metrics, traces, /status and log fields against a running daemon."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon, Upstream, basic_config, eventually, free_port


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items()
                               if k.startswith(("sidecar_", "rpc_"))
                               and k not in ("rpc_service", "rpc_method"))
            key = (s.name, labels)  # summed over methods
            samples[key] = samples.get(key, 0.0) + s.value
    return samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_each_kind_of_event(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    upstream_factory: Callable[[str], Upstream],
) -> None:
    up, bad = upstream_factory("up"), upstream_factory("bad")
    port = free_port()
    config = basic_config(short_dir, up)
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    config["targets"]["up"]["limits"] = {"max_in_flight": 1}
    config["targets"]["bad"] = {"kind": "grpc", "address": bad.address,
                                "retry": {"attempts": 1}, "breaker": {"failures": 1}}
    d = daemon_factory(config)
    bad.outage = grpc.StatusCode.UNAVAILABLE
    with d.channel() as ch:
        for _ in range(3):
            ch.unary_unary("/test.Echo/Unary")(b"ok", timeout=5)
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                ch.unary_unary("/test.Echo/Fail")(
                    b"x", metadata=[("fail-code", "INVALID_ARGUMENT")], timeout=5)
        ch.unary_unary("/test.Echo/Flaky")(b"x", metadata=[("fail-times", "1")], timeout=5)
        held = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=30)
        eventually(lambda: up.calls("Hold"))
        with pytest.raises(grpc.RpcError) as shed:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        assert shed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        up.release.set()
        held.result(timeout=10)
        bad_target = [("sidecar-target", "bad")]
        for _ in range(2):  # the first trips the breaker, the second is rejected by it
            with pytest.raises(grpc.RpcError):
                ch.unary_unary("/test.Echo/Flaky")(b"x", metadata=bad_target, timeout=5)
    m = _scrape(port)
    count = "rpc_client_call_duration_seconds_count"
    assert _value(m, count, sidecar_target="up", rpc_system="grpc", rpc_grpc_status_code="0") == 5
    assert _value(m, count, sidecar_target="up", rpc_system="grpc", rpc_grpc_status_code="3") == 2
    assert _value(m, count, sidecar_target="up", rpc_system="grpc", rpc_grpc_status_code="8") == 1
    assert _value(m, count, sidecar_target="bad", rpc_system="grpc",
                  rpc_grpc_status_code="14") == 2
    up_labels = {"sidecar_target": "up", "sidecar_kind": "grpc"}
    bad_labels = {"sidecar_target": "bad", "sidecar_kind": "grpc"}
    assert _value(m, "sidecar_target_attempts_total", **up_labels) == 8  # 3+2+2+1, none shed
    assert _value(m, "sidecar_target_retries_total", **up_labels) == 1
    assert _value(m, "sidecar_target_shed_total", **up_labels) == 1
    assert _value(m, "sidecar_target_attempts_total", **bad_labels) == 1
    assert _value(m, "sidecar_target_circuit_rejected_total", **bad_labels) == 1
    assert _value(m, "sidecar_target_breaker_transitions_total", **bad_labels) == 1
    assert _value(m, "sidecar_target_breaker_state", **bad_labels) == 2
    assert _value(m, "sidecar_target_breaker_state", **up_labels) == 0
    assert _value(m, "sidecar_target_in_flight", **up_labels) == 0


def test_status_shows_the_breaker_open_once_the_call_that_tripped_it_returns(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    port = free_port()
    config = basic_config(short_dir, upstream)
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    config["targets"]["up"]["breaker"] = {"failures": 1}
    config["targets"]["up"]["retry"] = {"attempts": 1}
    d = daemon_factory(config)
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        assert orjson.loads(r.read())["targets"]["up"]["breaker"]["state"] == "closed"
    with d.channel() as ch, pytest.raises(grpc.RpcError):
        ch.unary_unary("/test.Echo/Flaky")(b"x", timeout=5)
    # The status is read from the live breaker: no refresh period to wait out.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        assert orjson.loads(r.read())["targets"]["up"]["breaker"]["state"] == "open"


def test_log_lines_of_a_call_carry_its_correlation_and_trace_ids(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"]["breaker"] = {"failures": 1}
    d = daemon_factory(config)
    upstream.outage = grpc.StatusCode.UNAVAILABLE
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with d.channel() as ch, pytest.raises(grpc.RpcError):
        ch.unary_unary("/test.Echo/Flaky")(
            b"x", metadata=[("x-correlation-id", "corr-77"),
                            ("traceparent", f"00-{trace_id}-b7ad6b7169203331-01")], timeout=5)
    d.stop()
    of_call = [e for e in d.records() if e["body"] in ("call", "breaker open")]
    assert len(of_call) == 2
    assert all(e["sidecar.correlation_id"] == "corr-77" and e["trace_id"] == trace_id
               for e in of_call)
