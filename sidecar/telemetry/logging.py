"""JSON-lines logging to stderr (orjson), and the per-call access line.

Log records carry structured fields in `extra={"fields": {...}}`; nothing in
the daemon puts a header value or a `${VAR}` value into one.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sidecar.engine.peer import Peer

LOGGER = "sidecar"
# (correlation id, trace id) of the call the current task serves, for every log line.
CALL_FIELDS: ContextVar[tuple[str, str] | None] = ContextVar("sidecar_call", default=None)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call = CALL_FIELDS.get()
        if call is not None:
            entry["correlation_id"], entry["trace_id"] = call
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> logging.Logger:
    """Send the daemon's and grpc's log records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
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

    def call(
        self,
        *,
        listener: str,
        method: str,
        target: str | None,
        status: str,
        duration: float,
        correlation_id: str,
        request_id: str,
        trace_id: str,
        peer: Peer | None = None,
    ) -> None:
        fields = {
            "listener": listener, "method": method, "target": target, "status": status,
            "duration_ms": round(duration * 1000, 3), "correlation_id": correlation_id,
            "request_id": request_id, "trace_id": trace_id,
        }
        if peer is not None:  # the caller process, as the kernel said when it connected
            fields["peer_uid"], fields["peer_gid"], fields["peer_pid"] = (
                peer.uid, peer.gid, peer.pid)
        self._logger.info("call", extra={"fields": fields})
