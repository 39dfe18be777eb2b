"""Traces: a server span per incoming call, a client span per upstream attempt.

Off unless `telemetry.tracing.otlp_endpoint` is set; then spans continue the
caller's `traceparent` (parent-based sampling at `sample_ratio`) and each
attempt's span is what the upstream sees as its parent. With tracing off a
call carries no trace object and every hook is one branch.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
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
from sidecar.config import Tracing as TracingConfig
from sidecar.context import CallContext


class Tracer:
    """Owns the tracer provider; `None` from `from_config` means tracing is off."""

    def __init__(self, exporter: SpanExporter, sample_ratio: float) -> None:
        self.provider = TracerProvider(
            sampler=ParentBasedTraceIdRatio(sample_ratio),
            resource=Resource.create({"service.name": "sidecar",
                                      "service.version": __version__}),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("sidecar", __version__)

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracer | None:
        if config.otlp_endpoint is None:
            return None
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = config.otlp_endpoint
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
        span = self._tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "sidecar.listener": listener},
        )
        own = span.get_span_context()
        ctx.trace_id = f"{own.trace_id:032x}"
        ctx.span_id = f"{own.span_id:016x}"
        ctx.trace_flags = f"{int(own.trace_flags):02x}"
        return CallTrace(self._tracer, span, ctx)

    def shutdown(self) -> None:
        self.provider.shutdown()


class CallTrace:
    """One call's spans: the server span and the current attempt's client span."""

    def __init__(self, tracer: trace.Tracer, span: Span, ctx: CallContext) -> None:
        self._tracer = tracer
        self.span = span
        self._ctx = ctx
        self._attempt: Span | None = None
        self._number = 0

    def begin_attempt(self, target: str) -> str:
        """Start a client span; the traceparent to send upstream for this attempt."""
        self._number += 1
        self._attempt = self._tracer.start_span(
            f"attempt {target}", context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={"sidecar.target": target, "sidecar.attempt": self._number},
        )
        own = self._attempt.get_span_context()
        return f"00-{own.trace_id:032x}-{own.span_id:016x}-{int(own.trace_flags):02x}"

    def end_attempt(self, error: str | None) -> None:
        if self._attempt is not None:
            _finish(self._attempt, error)
            self._attempt = None

    def end(self, target: str | None, status: str, error: bool) -> None:
        self.end_attempt("call ended" if self._attempt is not None else None)
        if target:
            self.span.set_attribute("sidecar.target", target)
        self.span.set_attribute("rpc.grpc.status", status)
        _finish(self.span, status if error else None)


def _finish(span: Any, error: str | None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
