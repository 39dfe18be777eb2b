"""Metrics: OpenTelemetry instruments, exported as Prometheus text from our own registry.

Per-call work is one histogram record (telemetry/histogram.py: the durations are
aggregated by the daemon, not the SDK, for cost); everything the resilience layer
already counts (attempts, retries, refused retries, shed calls, breaker state
and transitions, in-flight) is read from its counters at scrape time.

No `otel_scope_*` labels on any series (one scope, they only multiplied label sets);
`target_info` stays: one series carrying service.name/version, for joins.
`process_*`, `python_gc_*` and `python_info` come from prometheus_client's collectors.
`render(openmetrics=True)` gives OpenMetrics text (GET /metrics with
`Accept: application/openmetrics-text`), Prometheus text otherwise.

Labels follow the OpenTelemetry semantic conventions 1.37 (as semconv.py): metric names
are unchanged (rpc.client.call.duration, http.client.request.duration,
messaging.client.operation.duration, messaging.client.sent.messages); changes:
- every duration series: + `server_address`, `server_port` (the target as configured)
- rpc: + `rpc_service`, `rpc_method` (MAX_METHODS per target, then both `other`)
- http: `http_request_method` outside the standard methods -> `_OTHER`
- messaging: + `messaging_operation_type="send"`; `messaging_destination_name` bounded:
  configured topics as they are, glob matches up to MAX_TOPICS per target, else `other`
- all series: - `otel_scope_name`, `otel_scope_version`, `otel_scope_schema_url`
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from sidecar import __version__
from sidecar.config import KafkaTarget
from sidecar.resilience.breaker import CLOSED, HALF_OPEN, OPEN
from sidecar.resilience.policy import TargetPolicy
from sidecar.telemetry.histogram import DurationHistogram, Histograms
from sidecar.telemetry.semconv import resource, rpc_names

# Seconds: sub-millisecond proxy hops to multi-second upstream calls.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0)
BREAKER_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
# Kafka spools, read from their ledgers at scrape time: (stats field, name, unit, what).
_SPOOL_GAUGES = (
    ("messages", "sidecar.kafka.spool.messages", "{message}",
     "messages waiting in the target's spool"),
    ("bytes", "sidecar.kafka.spool.bytes", "By", "bytes held by the target's spool"),
    ("oldest_age_s", "sidecar.kafka.spool.oldest_age", "s",
     "age of the oldest message waiting in the spool (0 when empty)"),
)
_MAX_SENT_SERIES = 4096  # (target, topic) pairs counted apart; more are counted as "other"
MAX_METHODS = 64  # distinct gRPC methods per target labelled apart; more are "other"
MAX_TOPICS = 64  # topics per target matching only a glob labelled apart; more are "other"
OTHER = "other"
_HTTP_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


class Metrics:
    """The daemon's instruments; `render()` is the body of GET /metrics."""

    def __init__(
        self, policies: Callable[[], dict[str, TargetPolicy]], active: dict[str, int],
        spools: Callable[[], dict[str, dict[str, Any]]] = dict,
    ) -> None:
        self._policies = policies
        self._spools = spools
        self._methods: dict[str, dict[str, tuple[str, str]]] = {}  # target -> path -> names
        self._topics: dict[str, dict[str, str]] = {}  # target -> topic -> label
        self._globbed: dict[str, int] = {}  # target -> topics labelled by a glob match
        self._active = active
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.registry.register(GC_COLLECTOR)
        self.registry.register(PLATFORM_COLLECTOR)
        self.provider = MeterProvider(
            metric_readers=[PrometheusMetricReader(registry=self.registry,
                                                   scope_info_enabled=False)],
            resource=resource(),
        )
        meter = self.provider.get_meter("sidecar", __version__)
        scope: dict[str, str] = {}  # no otel_scope_* labels
        self.rpc_duration = DurationHistogram(
            "rpc_client_call_duration_seconds",
            "gRPC calls proxied to grpc targets, by final status", BUCKETS, scope)
        self.http_duration = DurationHistogram(
            "http_client_request_duration_seconds",
            "HttpProxy calls to http targets, by upstream status or error", BUCKETS, scope)
        self.messaging_duration = DurationHistogram(
            "messaging_client_operation_duration_seconds",
            "Publish and PublishBatch calls to kafka targets, by outcome", BUCKETS, scope)
        self.registry.register(Histograms(
            [self.rpc_duration, self.http_duration, self.messaging_duration]))
        # (target, topic) -> [messages, bytes] acknowledged; counted per call, observed at
        # scrape time (OpenTelemetry's Counter.add cost about 5 us a call, twice per publish).
        self.sent: dict[tuple[str, str], list[int]] = {}
        meter.create_observable_counter(
            "messaging.client.sent.messages", callbacks=[self._sent(0)], unit="{message}",
            description="Kafka messages acknowledged by the broker")
        meter.create_observable_counter(
            "sidecar.kafka.sent.bytes", callbacks=[self._sent(1)], unit="By",
            description="Bytes of Kafka message values acknowledged by the broker")
        self._observe(meter, "sidecar.target.attempts", "{attempt}", "upstream attempts",
                      lambda p: p.counters.attempts)
        self._observe(meter, "sidecar.target.retries", "{retry}", "retries made",
                      lambda p: p.counters.retries)
        self._observe(meter, "sidecar.target.retries.refused", "{retry}",
                      "retries not made because the retry budget was spent",
                      lambda p: p.counters.budget_exhausted)
        self._observe(meter, "sidecar.target.shed", "{call}",
                      "calls refused at once over limits.max_in_flight",
                      lambda p: p.counters.shed)
        self._observe(meter, "sidecar.target.circuit_rejected", "{call}",
                      "calls failed fast while the breaker was open",
                      lambda p: p.counters.circuit_rejected)
        self._observe(meter, "sidecar.target.breaker.transitions", "{transition}",
                      "breaker state changes", lambda p: p.breaker.transitions)
        in_flight = self._per_target(lambda p: p.counters.in_flight)
        meter.create_observable_up_down_counter(
            "sidecar.target.in_flight", callbacks=[in_flight], unit="{call}",
            description="calls in flight per target")
        meter.create_observable_gauge(
            "sidecar.target.breaker.state",
            callbacks=[self._per_target(lambda p: BREAKER_VALUES[p.breaker.state])],
            unit="1", description="breaker state: 0 closed, 1 half-open, 2 open")
        for field, name, unit, description in _SPOOL_GAUGES:
            meter.create_observable_gauge(name, callbacks=[self._spool(field)], unit=unit,
                                          description=description)
        meter.create_observable_up_down_counter(
            "sidecar.listener.active_calls", callbacks=[self._listeners], unit="{call}",
            description="calls in progress per listener")

    def labels(self, target: str, kind: str, method: str,
               attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        """A call's histogram attributes (a cache miss in the hub: not per call). Names and
        values a caller picks (gRPC methods, topics, HTTP methods) are bounded."""
        attrs: dict[str, Any] = {"sidecar.target": target, **(attributes or {})}
        policy = self._policies().get(target)
        if policy is not None:
            address, port = policy.server
            attrs["server.address"] = address
            if port is not None:
                attrs["server.port"] = port
        if kind == "grpc":
            attrs["rpc.system"] = "grpc"
            attrs["rpc.service"], attrs["rpc.method"] = self.rpc_labels(target, method)
        elif kind == "http":
            verb = attrs.get("http.request.method")
            if verb is not None and verb not in _HTTP_METHODS:
                attrs["http.request.method"] = "_OTHER"  # as the conventions say
        elif kind == "kafka":
            attrs.setdefault("messaging.operation.type", "send")
            topic = attrs.get("messaging.destination.name")
            if topic is not None:
                attrs["messaging.destination.name"] = self.topic_label(target, str(topic))
        return attrs

    def rpc_labels(self, target: str, path: str) -> tuple[str, str]:
        """(`rpc.service`, `rpc.method`) of `path`; past MAX_METHODS per target, "other"."""
        seen = self._methods.setdefault(target, {})
        found = seen.get(path)
        if found is None:
            if len(seen) >= MAX_METHODS:
                return OTHER, OTHER
            found = seen[path] = rpc_names(path)
        return found

    def topic_label(self, target: str, topic: str) -> str:
        """A configured topic as it is; one matching only a glob, up to MAX_TOPICS per target;
        anything else "other"."""
        seen = self._topics.setdefault(target, {})
        found = seen.get(topic)
        if found is not None:
            return found
        policy = self._policies().get(target)
        config = None if policy is None else policy.target
        label = OTHER
        if isinstance(config, KafkaTarget):
            if topic in config.topics:
                label = topic
            elif any(p.fullmatch(topic) for p in config.topic_patterns):  # as check_topic
                globbed = self._globbed.get(target, 0)
                if globbed < MAX_TOPICS:
                    self._globbed[target] = globbed + 1
                    label = topic
        if len(seen) < _MAX_SENT_SERIES:
            seen[topic] = label
        return label

    def render(self, openmetrics: bool = False) -> bytes:
        if openmetrics:
            body: bytes = generate_openmetrics(self.registry)  # type: ignore[no-untyped-call]
            return body
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown()

    def _observe(self, meter: Any, name: str, unit: str, description: str,
                 read: Callable[[TargetPolicy], int]) -> None:
        meter.create_observable_counter(name, callbacks=[self._per_target(read)], unit=unit,
                                        description=description)

    def _per_target(
        self, read: Callable[[TargetPolicy], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(read(p), {"sidecar.target": name, "sidecar.kind": p.target.kind})
                for name, p in self._policies().items()
            ]
        return observe

    def count_sent(self, target: str, topic: str, count: int, size: int) -> None:
        """`count` messages of `size` bytes in all acknowledged on `topic` of `target`."""
        entry = self.sent_counts(target, topic)
        entry[0] += count
        entry[1] += size

    def sent_counts(self, target: str, topic: str) -> list[int]:
        """The [messages, bytes] counters `topic` of `target` adds to (those of its label):
        the same list for the process's life, so the hub keeps it at hand."""
        topic = self.topic_label(target, topic)
        entry = self.sent.get((target, topic))
        if entry is None:
            if len(self.sent) >= _MAX_SENT_SERIES:
                topic = "other"
                entry = self.sent.setdefault((target, topic), [0, 0])
            else:
                entry = self.sent[target, topic] = [0, 0]
        return entry

    def _sent(self, which: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(entry[which], {
                "sidecar.target": target, "messaging.system": "kafka",
                "messaging.destination.name": topic}) for (target, topic), entry in
                list(self.sent.items())]
        return observe

    def _spool(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(s[field], {"sidecar.target": name})
                    for name, s in self._spools().items()]
        return observe

    def _listeners(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"sidecar.listener": name}) for name, n in self._active.items()]
