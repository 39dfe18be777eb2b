"""OpenTelemetry semantic-convention names the daemon's spans, metrics and logs share.

Followed: semantic conventions 1.37 (RPC: `rpc.system`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code` as an integer; HTTP client: `http.request.method`,
`http.response.status_code`, `url.full`, `server.address`, `server.port`,
`error.type`; messaging: `messaging.system`, `messaging.operation.name`,
`messaging.operation.type`, `messaging.destination.name`,
`messaging.destination.partition.id`, `messaging.kafka.offset`,
`messaging.batch.message_count`). The daemon's own facts are `sidecar.*`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource

from sidecar import __version__
from sidecar.config import GrpcTarget, HttpTarget, KafkaTarget, Target
from sidecar.config import Tracing as TracingConfig
from sidecar.telemetry.redaction import NO_SECRETS, Redactor

SERVICE_NAME = "sidecar"  # unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say another
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_wanted(config: TracingConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing is on: `telemetry.tracing.otlp_endpoint`, or an OTLP endpoint in
    the environment; never with OTEL_SDK_DISABLED=true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return config.otlp_endpoint is not None or any(environ.get(v) for v in _ENDPOINT_VARIABLES)


def resource() -> Resource:
    """The process's resource: the SDK's detectors (OTEL_RESOURCE_ATTRIBUTES,
    OTEL_SERVICE_NAME) over `service.name=sidecar` and the daemon's version."""
    detected = Resource.create({"service.version": __version__})
    name = str(detected.attributes.get("service.name", ""))
    if not name or name.startswith("unknown_service"):
        detected = detected.merge(Resource({"service.name": SERVICE_NAME}))
    return detected


@lru_cache(maxsize=1024)
def rpc_names(path: str) -> tuple[str, str]:
    """`/pkg.Service/Method` as (`rpc.service`, `rpc.method`); a path of another shape
    is all service, and the method `_OTHER` (as the conventions name an unknown one)."""
    service, _, method = path.lstrip("/").rpartition("/")
    if not service or not method:
        return path, "_OTHER"
    return service, method


def server_of(target: Target, redact: Redactor = NO_SECRETS) -> tuple[str, int | None]:
    """(`server.address`, `server.port`) of a target as configured: the logical name the
    daemon dials, a Unix socket's path (no port), or a Kafka target's first bootstrap.
    What came from a `${VAR}` is blanked by `redact` (and then no port is shown)."""
    address, port = _server(target.kind, _address_text(target))
    shown = redact(address)
    return (shown, port) if shown == address else (shown, None)


def _address_text(target: Target) -> str:
    if isinstance(target, GrpcTarget):
        return target.address
    if isinstance(target, HttpTarget):
        return target.base_url
    if isinstance(target, KafkaTarget):
        return target.bootstrap_servers[0] if target.bootstrap_servers else ""
    return ""


@lru_cache(maxsize=1024)
def _server(kind: str, text: str) -> tuple[str, int | None]:
    if kind == "http":
        parts = urlsplit(text)
        default = 443 if parts.scheme == "https" else 80
        try:
            port = parts.port or default
        except ValueError:
            port = default
        return parts.hostname or "", port
    for prefix in ("unix://", "unix:"):
        if text.startswith(prefix):
            return text[len(prefix):], None
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    host, sep, digits = text.rpartition(":")
    if not sep or not digits.isdigit():
        return text.strip("[]"), None
    return host.strip("[]"), int(digits)

