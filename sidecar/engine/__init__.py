"""Sans-I/O HTTP/2 engine (RFC 9113) for the listeners and the transparent gRPC proxy."""

from sidecar.engine.connection import H2Connection
from sidecar.engine.errors import (
    ConnectionClosedError,
    EngineError,
    StreamLimitError,
    StreamStateError,
)
from sidecar.engine.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from sidecar.engine.frames import ErrorCode, SettingId
from sidecar.engine.limits import EngineLimits

__all__ = [
    "ConnectionClosedError",
    "ConnectionTerminated",
    "DataReceived",
    "EngineError",
    "EngineLimits",
    "ErrorCode",
    "Event",
    "GoAwayReceived",
    "H2Connection",
    "PingAckReceived",
    "RemoteSettingsChanged",
    "RequestReceived",
    "ResponseReceived",
    "SettingId",
    "StreamLimitError",
    "StreamReset",
    "StreamStateError",
    "TrailersReceived",
    "WindowUpdated",
]
