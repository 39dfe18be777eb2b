"""Traces: a SERVER span per incoming call, a span per upstream attempt under it.

On when `telemetry.tracing.otlp_endpoint` is set, or when the environment names an
OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
the config key wins where both are set, and `OTEL_SDK_DISABLED=true` turns tracing off.
The exporter reads the rest of `OTEL_EXPORTER_OTLP_*` (headers, certificates,
compression, timeout) itself; the resource follows `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` (service.name is `sidecar` unless they say another).

Spans continue the caller's `traceparent` (parent-based sampling at `sample_ratio`);
each attempt's span is what the upstream sees as its parent. Names and attributes follow
the semantic conventions (telemetry/semconv.py): gRPC attempts are CLIENT spans named
`pkg.Service/Method`, HTTP attempts CLIENT spans named by the HTTP method, Kafka
publishes PRODUCER spans named `send <topic>`. With tracing off a call carries no trace
object and every hook is one branch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from sidecar import __version__
from sidecar.config import HttpTarget
from sidecar.config import Tracing as TracingConfig
from sidecar.context import CallContext
from sidecar.resilience.policy import TargetPolicy
from sidecar.telemetry.semconv import resource, rpc_names, tracing_wanted


class Tracer:
    """Owns the tracer provider; `None` from `from_config` means tracing is off."""

    def __init__(self, exporter: SpanExporter, sample_ratio: float) -> None:
        self.provider = TracerProvider(
            sampler=ParentBasedTraceIdRatio(sample_ratio), resource=resource())
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("sidecar", __version__)

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracer | None:
        if not tracing_wanted(config):
            return None
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = config.otlp_endpoint
        if endpoint is None:  # the exporter reads OTEL_EXPORTER_OTLP_* itself
            return cls(OTLPSpanExporter(), config.sample_ratio)
        insecure = not endpoint.startswith("https://")
        return cls(OTLPSpanExporter(endpoint=endpoint, insecure=insecure), config.sample_ratio)

    def begin(self, ctx: CallContext, listener: str, method: str) -> CallTrace:
        """Start the server span for one call; ctx's trace ids become the span's."""
        parent = None
        if ctx.continued:
            remote = SpanContext(
                trace_id=int(ctx.trace_id, 16), span_id=int(ctx.parent_span_id, 16),
                is_remote=True, trace_flags=TraceFlags(int(ctx.trace_flags, 16)),
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote))
        service, name = rpc_names(method)
        span = self._tracer.start_span(
            method.lstrip("/"), context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name,
                        "sidecar.listener": listener},
        )
        own = span.get_span_context()
        ctx.trace_id = f"{own.trace_id:032x}"
        ctx.span_id = f"{own.span_id:016x}"
        ctx.trace_flags = f"{int(own.trace_flags):02x}"
        return CallTrace(self._tracer, span, ctx, method)

    def shutdown(self) -> None:
        self.provider.shutdown()


class CallTrace:
    """One call's spans: the server span and the current attempt's span."""

    def __init__(self, tracer: trace.Tracer, span: Span, ctx: CallContext,
                 method: str) -> None:
        self._tracer = tracer
        self.span = span
        self._ctx = ctx
        self._method = method
        self._attempt: Span | None = None
        self._kind = ""
        self._number = 0

    def begin_attempt(self, policy: TargetPolicy, operation: str = "", where: str = "",
                      ) -> str:
        """Start an attempt's span; the traceparent to send upstream for this attempt.
        `operation`, `where`: an HTTP call's method and path, a Kafka publish's topic."""
        self._number += 1
        target = policy.target
        kind = self._kind = target.kind
        address, port = policy.server
        attributes: dict[str, Any] = {"server.address": address,
                                      "sidecar.target": target.name}
        if port is not None:
            attributes["server.port"] = port
        if kind == "kafka":
            span_kind = SpanKind.PRODUCER
            name = f"send {where}"
            attributes.update({
                "messaging.system": "kafka", "messaging.operation.name": "send",
                "messaging.operation.type": "send", "messaging.destination.name": where})
        elif kind == "http":
            span_kind = SpanKind.CLIENT
            name = operation or "HTTP"
            assert isinstance(target, HttpTarget)
            attributes["http.request.method"] = operation
            # The path without its query: query strings carry tokens often enough.
            if port is not None:  # the base URL is no secret (server_of blanked none)
                attributes["url.full"] = (target.base_url.rstrip("/")
                                          + where.partition("?")[0])
            if self._number > 1:
                attributes["http.request.resend_count"] = self._number - 1
        else:
            span_kind = SpanKind.CLIENT
            name = self._method.lstrip("/")
            service, method = rpc_names(self._method)
            attributes.update({"rpc.system": "grpc", "rpc.service": service,
                               "rpc.method": method})
        if self._number > 1:
            attributes["sidecar.attempt"] = self._number
        self._attempt = self._tracer.start_span(
            name, context=trace.set_span_in_context(self.span), kind=span_kind,
            attributes=attributes,
        )
        own = self._attempt.get_span_context()
        return f"00-{own.trace_id:032x}-{own.span_id:016x}-{int(own.trace_flags):02x}"

    def end_attempt(self, error: str | BaseException | None, status: int | None = None,
                    facts: Mapping[str, Any] | None = None) -> None:
        """End the attempt's span: the upstream's gRPC or HTTP `status`, kind `facts`;
        `error` a status name, or the daemon's error (its class is the `error.type`)."""
        span = self._attempt
        if span is None:
            return
        self._attempt = None
        if isinstance(error, BaseException):
            span.set_attribute("error.type", type(error).__name__)
            error = str(error)
        elif error is not None:  # a status name (an upstream's gRPC status)
            span.set_attribute("error.type", error if error.isupper() else "_OTHER")
        if status is not None:
            if self._kind == "http":
                span.set_attribute("http.response.status_code", status)
                if status >= 400:
                    span.set_attribute("error.type", str(status))
                    error = error or f"HTTP {status}"
            else:
                span.set_attribute("rpc.grpc.status_code", status)
        if facts:
            span.set_attributes(facts)
        _finish(span, error)

    def end(self, target: str | None, status: int, name: str, error: bool,
            flags: str) -> None:
        """End the server span with the status the caller got (code and name)."""
        self.end_attempt("call ended" if self._attempt is not None else None)
        span = self.span
        if target:
            span.set_attribute("sidecar.target", target)
        span.set_attribute("rpc.grpc.status_code", status)
        if flags:
            span.set_attribute("sidecar.response_flags", flags)
        if error:
            span.set_attribute("error.type", name)
        _finish(span, name if error else None)


def _finish(span: Any, error: str | None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()

