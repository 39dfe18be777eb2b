"""What the engine raises at its caller, and the violations it turns into frames itself.

    EngineError                 misuse of the sending API (never raised by receive())
    ├── ConnectionClosedError   the connection has ended: nothing more can be sent
    ├── StreamStateError        the stream's state does not allow this (RFC 9113 section 5.1)
    └── StreamLimitError        a new stream would pass the peer's MAX_CONCURRENT_STREAMS or GOAWAY

    ProtocolViolation           internal: what a peer did wrong, answered on the wire by the engine
    ├── ConnectionViolation     a connection error: GOAWAY, then ConnectionTerminated
    └── StreamViolation         a stream error: RST_STREAM, then StreamReset(remote=False)
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of the errors the sending API raises when called out of turn."""


class ConnectionClosedError(EngineError):
    """The connection was terminated or closed by a GOAWAY with an error: nothing more is sent."""


class StreamStateError(EngineError):
    """The stream cannot carry this frame in its current state (or was never opened)."""


class StreamLimitError(EngineError):
    """Opening another stream would break the peer's stream limit or its GOAWAY."""


class ProtocolViolation(Exception):
    """A peer broke RFC 9113; carries the error code the engine answers with."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


class ConnectionViolation(ProtocolViolation):
    """A connection error (RFC 9113 section 5.4.1)."""


class StreamViolation(ProtocolViolation):
    """A stream error (RFC 9113 section 5.4.2) on one stream."""

    def __init__(self, stream_id: int, error_code: int, reason: str) -> None:
        super().__init__(error_code, reason)
        self.stream_id = stream_id
