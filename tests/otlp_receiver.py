"""An OTLP/gRPC trace receiver on a real port (opentelemetry-proto's servicer)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def value_of(any_value: Any) -> Any:
    """An OTLP AnyValue as Python."""
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def attributes(item: Any) -> dict[str, Any]:
    """A span's or resource's attributes as a dict."""
    return {kv.key: value_of(kv.value) for kv in item.attributes}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.resources: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = 0

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource in request.resource_spans:
                self.resources.append(attributes(resource.resource))
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of_kind(self, kind: int) -> list[trace_pb2.Span]:
        return [s for s in self.spans if s.kind == kind]


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    got = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(got, server)
    got.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield got
    finally:
        server.stop(0).wait()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as got:
        yield got


SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
PRODUCER = trace_pb2.Span.SPAN_KIND_PRODUCER
