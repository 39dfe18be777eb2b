"""JSON-lines logging to stderr (orjson), and the per-call access line.

Each line is a record of the OpenTelemetry log data model, its field names as the
OpenTelemetry Python SDK writes a LogRecord as JSON: `timestamp` (RFC 3339, UTC),
`severity_text` and `severity_number`, `body` (the message), `scope` (the logger),
`trace_id` and `span_id` of the call it belongs to, and `attributes`. The access line's
attributes use the semantic conventions' names (telemetry/semconv.py) and `sidecar.*`
for the daemon's own facts; docs/observability.md lists them.

Under systemd, when stderr is the journal (`JOURNAL_STREAM` names it), each line starts
with its syslog priority (`<6>` for info, sd-daemon(3)), so journald files it at
that level rather than all at info.

Log records carry structured fields in `extra={"fields": {...}}`; nothing in the daemon
puts a header value or a `${VAR}` value into one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Any

import orjson

from sidecar.telemetry.semconv import rpc_names

if TYPE_CHECKING:
    from sidecar.context import CallContext
    from sidecar.resilience.policy import TargetPolicy
    from sidecar.status import StatusCode

LOGGER = "sidecar"
# (correlation id, trace id, span id) of the call the current task serves, for every line.
CALL_FIELDS: ContextVar[tuple[str, str, str] | None] = ContextVar("sidecar_call", default=None)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# The data model's severity by Python level: (severity_text, severity_number, syslog).
_SEVERITY = {
    logging.DEBUG: ("DEBUG", 5, 7), logging.INFO: ("INFO", 9, 6),
    logging.WARNING: ("WARN", 13, 4), logging.ERROR: ("ERROR", 17, 3),
    logging.CRITICAL: ("FATAL", 21, 2),
}


def _severity(level: int) -> tuple[str, int, int]:
    found = _SEVERITY.get(level)
    if found is None:  # a level between the named ones takes the one below it
        below = max((lv for lv in _SEVERITY if lv <= level), default=logging.DEBUG)
        found = _SEVERITY[below]
    return found


_second = (-1, "")  # the last second formatted, and its text: one strftime a second


def _timestamp(created: float) -> str:
    global _second
    whole = int(created)
    micro = round((created - whole) * 1e6)  # to the nearest, as datetime rounds
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    second, text = _second
    if second != whole:  # (whole, text) replaced as one tuple: safe from any thread
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{micro:06d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line, as the log data model names its fields; `journald`
    puts the syslog priority in front of it."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text, number, priority = _severity(record.levelno)
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "severity_text": text,
            "severity_number": number,
            "body": record.getMessage(),
            "scope": record.name,
        }
        attributes: dict[str, Any] = {}
        call = getattr(record, "call", None) or CALL_FIELDS.get()
        if call is not None:
            attributes["sidecar.correlation_id"] = call[0]
            entry["trace_id"], entry["span_id"] = call[1], call[2]
        fields = getattr(record, "fields", None)
        if fields:
            attributes.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            attributes["exception.type"] = record.exc_info[0].__name__
            attributes["exception.message"] = str(record.exc_info[1])
            attributes["exception.stacktrace"] = self.formatException(record.exc_info)
        if attributes:
            entry["attributes"] = attributes
        line = orjson.dumps(entry).decode()
        return f"<{priority}>{line}" if self.journald else line


def stream_is_journal(stream: IO[Any], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `stream` is the journal systemd connected (JOURNAL_STREAM is
    `device:inode` of it; a stream redirected elsewhere keeps the variable, not the file)."""
    named = environ.get("JOURNAL_STREAM", "")
    device, sep, inode = named.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def configure_logging(level: str) -> logging.Logger:
    """Send the daemon's and grpc's log records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(journald=stream_is_journal(sys.stderr)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger = logging.getLogger(LOGGER)
    logger.setLevel(_LEVELS[level])
    return logger


def set_level(level: str) -> None:
    logging.getLogger(LOGGER).setLevel(_LEVELS[level])


def current_level() -> str:
    """The daemon's log level by its config name (`info`)."""
    level = logging.getLogger(LOGGER).getEffectiveLevel()
    return next((name for name, value in _LEVELS.items() if value == level),
                logging.getLevelName(level).lower())


class AccessLog:
    """Writes one line per call; a disabled log costs one branch."""

    def __init__(self, enabled: bool) -> None:
        self._logger = logging.getLogger(f"{LOGGER}.access")
        self.enabled = False
        self.configure(enabled)

    def configure(self, enabled: bool) -> None:
        """Follow `log.access` and the log level (call after either changes)."""
        self.enabled = enabled and self._logger.isEnabledFor(logging.INFO)

    def call(self, listener: str, method: str, policy: TargetPolicy | None, status: StatusCode,
             duration: float, ctx: CallContext,
             attributes: Mapping[str, Any] | None = None) -> None:
        """The line of one call: what the caller got, and what happened upstream."""
        service, name = rpc_names(method)
        fields: dict[str, Any] = {
            "sidecar.listener": listener, "rpc.system": "grpc", "rpc.service": service,
            "rpc.method": name, "rpc.grpc.status_code": status.number,
            "sidecar.status": status.name, "sidecar.duration_ms": round(duration * 1000, 3),
        }
        if policy is not None:
            fields["sidecar.target"] = policy.target.name
            address, port = policy.server
            fields["server.address"] = address
            if port is not None:
                fields["server.port"] = port
        if ctx.upstream_status is not None:
            fields["sidecar.upstream.status_code"] = ctx.upstream_status
        if attributes:
            fields.update(attributes)
        if ctx.facts:
            fields.update(ctx.facts)
        fields["sidecar.attempts"] = ctx.attempts
        fields["sidecar.request.bytes"] = ctx.request_bytes
        fields["sidecar.response.bytes"] = ctx.response_bytes
        fields["sidecar.response_flags"] = ctx.flags or "-"
        fields["sidecar.request_id"] = ctx.request_id
        peer = ctx.peer
        if peer is not None:  # the caller process, as the kernel said when it connected
            fields["sidecar.peer.uid"], fields["sidecar.peer.gid"], fields["sidecar.peer.pid"] = (
                peer.uid, peer.gid, peer.pid)
        self._logger.info("call", extra={
            "fields": fields, "call": (ctx.correlation_id, ctx.trace_id, ctx.span_id)})
