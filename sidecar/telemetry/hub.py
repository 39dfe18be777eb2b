"""The one seam between the data path and telemetry: `begin` and `end` of a call.

The data path says what happened; this module decides what becomes a metric,
a span or a log line. With tracing off and the access log off, a call costs
two dictionary updates and one histogram record (a bisect and three additions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sidecar.config import Config
from sidecar.context import CallContext
from sidecar.resilience.policy import TargetPolicy
from sidecar.status import StatusCode
from sidecar.telemetry.histogram import Series
from sidecar.telemetry.logging import CALL_FIELDS, AccessLog
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.semconv import tracing_wanted

if TYPE_CHECKING:  # the tracing SDK is loaded only when tracing is on
    from sidecar.telemetry.tracing import Tracer

_MAX_CACHED_ATTRS = 4096  # target x kind x status: bounded by config, capped all the same


class Telemetry:
    """Access log, metrics and traces for every call the daemon serves."""

    def __init__(self, config: Config, policies: Callable[[], dict[str, TargetPolicy]],
                 spools: Callable[[], dict[str, dict[str, Any]]] = dict) -> None:
        self.access = AccessLog(config.log.access)
        self.active: dict[str, int] = {}
        self.metrics = Metrics(policies, self.active, spools)
        self._policies = policies
        self.tracer: Tracer | None = None
        if tracing_wanted(config.telemetry.tracing):
            from sidecar.telemetry.tracing import Tracer

            self.tracer = Tracer.from_config(config.telemetry.tracing)
        self.metrics_on = config.telemetry.metrics.enabled
        # Histogram series by target, kind, status and extra attributes, looked up once.
        self._series: dict[tuple[Any, ...], Series] = {}
        self._sent: dict[tuple[str, str], list[int]] = {}  # (target, topic) -> its counters
        self._durations = {
            "grpc": self.metrics.rpc_duration,
            "http": self.metrics.http_duration,
            "kafka": self.metrics.messaging_duration,
        }

    def begin(self, listener: str, method: str, ctx: CallContext) -> None:
        """A call arrived on `listener` (after its context was read)."""
        self.active[listener] = self.active.get(listener, 0) + 1
        if self.tracer is not None:
            ctx.trace = self.tracer.begin(ctx, listener, method)
        CALL_FIELDS.set((ctx.correlation_id, ctx.trace_id, ctx.span_id))

    def end(
        self,
        listener: str,
        method: str,
        target: str | None,
        kind: str | None,
        status: StatusCode,
        started: float,
        ctx: CallContext,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """The call ended with `status` (the daemon's gRPC status to its caller)."""
        duration = time.monotonic() - started
        self.active[listener] -= 1
        if self.metrics_on and target is not None and kind is not None:
            key = (target, kind, status, method if kind == "grpc" else None,
                   None if attributes is None else tuple(attributes.items()))
            series = self._series.get(key)
            if series is None:  # labels bounded per target by Metrics.labels
                attrs = self.metrics.labels(target, kind, method, attributes)
                if kind == "grpc":
                    attrs["rpc.grpc.status_code"] = status.number
                elif status is not StatusCode.OK:
                    attrs["error.type"] = status.name
                series = self._durations[kind].series(attrs)
                if len(self._series) < _MAX_CACHED_ATTRS:
                    self._series[key] = series
            if ctx.trace is not None and int(ctx.trace_flags, 16) & 1:  # sampled: an exemplar
                series.record_traced(duration, ctx.trace_id, ctx.span_id)
            else:
                series.record(duration)
        if ctx.trace is not None:
            ctx.trace.end(target, status.number, status.name, status is not StatusCode.OK,
                          ctx.flags)
        if self.access.enabled:
            policy = None if target is None else self._policies().get(target)
            self.access.call(listener, method, policy, status, duration, ctx, attributes)

    def messages_sent(self, target: str, topic: str, count: int, size: int) -> None:
        if not self.metrics_on:
            return
        entry = self._sent.get((target, topic))
        if entry is None:  # the topic's counters, looked up by Metrics (Python code) once
            entry = self.metrics.sent_counts(target, topic)
            if len(self._sent) < _MAX_CACHED_ATTRS:
                self._sent[target, topic] = entry
        entry[0] += count
        entry[1] += size

    def shutdown(self) -> None:
        if self.tracer is not None:
            self.tracer.shutdown()
        self.metrics.shutdown()
