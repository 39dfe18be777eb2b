"""The daemon's own duration histograms: buckets, cumulative counts, the text on /metrics."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from sidecar.telemetry import histogram
from sidecar.telemetry.histogram import DurationHistogram, Histograms

SCOPE = {"otel_scope_name": "sidecar", "otel_scope_version": "1"}


def render(*histograms: DurationHistogram) -> str:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(Histograms(list(histograms)))
    return generate_latest(registry).decode()


def samples(text: str, name: str) -> dict[str, float]:
    """`{le: value}` of one series' buckets, plus `_count` and `_sum`."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf'{name}_bucket{{.*le="([^"]+)".*}} (\S+)$', line)
        if m:
            out[m[1]] = float(m[2])
        m = re.match(rf"{name}_(count|sum){{.*}} (\S+)$", line)
        if m:
            out[m[1]] = float(m[2])
    return out


def test_a_value_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative() -> None:
    h = DurationHistogram("call_seconds", "calls", (0.1, 1.0), SCOPE)
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.record(value, {"sidecar.target": "up", "rpc.grpc.status_code": 0})
    got = samples(render(h), "call_seconds")
    assert got == {"0.1": 2.0, "1.0": 4.0, "+Inf": 5.0, "count": 5.0, "sum": 8.65}


def test_labels_are_the_attributes_with_underscores_plus_the_scope() -> None:
    h = DurationHistogram("call_seconds", "calls", (1.0,), SCOPE)
    h.record(0.5, {"sidecar.target": "up", "rpc.grpc.status_code": 14})
    h.record(0.5, {"sidecar.target": "other", "error.type": "UNAVAILABLE"})
    text = render(h)
    assert "# TYPE call_seconds histogram" in text
    assert ('call_seconds_count{error_type="",otel_scope_name="sidecar",otel_scope_version="1",'
            'rpc_grpc_status_code="14",sidecar_target="up"} 1.0') in text
    assert ('call_seconds_count{error_type="UNAVAILABLE",otel_scope_name="sidecar",'
            'otel_scope_version="1",rpc_grpc_status_code="",sidecar_target="other"} 1.0') in text


def test_the_same_attributes_in_another_order_are_one_series() -> None:
    h = DurationHistogram("call_seconds", "calls", (1.0,), SCOPE)
    first = h.series({"a": 1, "b": "x"})
    assert h.series({"b": "x", "a": 1}) is first
    assert h.series({"a": 2, "b": "x"}) is not first


def test_an_unused_histogram_renders_nothing() -> None:
    assert "call_seconds" not in render(DurationHistogram("call_seconds", "calls", (1.0,), {}))


def test_series_past_the_cap_are_counted_without_attributes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(histogram, "_MAX_SERIES", 2)
    h = DurationHistogram("call_seconds", "calls", (1.0,), {})
    for i in range(5):
        h.record(0.5, {"sidecar.target": f"t{i}"})
    text = render(h)
    assert text.count("call_seconds_count{") == 3
    assert 'call_seconds_count{sidecar_target=""} 3.0' in text
