"""Events H2Connection.receive() returns: what the peer did, in wire order.

A stream's remote side has ended when one of its events says so: `end_stream=True` on
RequestReceived / ResponseReceived / DataReceived, or any TrailersReceived (trailers always
end the stream). There is no separate StreamEnded event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]
NO_NAMES: frozenset[bytes] = frozenset()


class Event:
    """Base of every event."""

    __slots__ = ()


@dataclass(slots=True)
class RequestReceived(Event):
    """Server side: a peer opened a stream with a valid request header block."""

    stream_id: int
    headers: Headers
    end_stream: bool = False
    never_indexed: frozenset[bytes] = field(default=NO_NAMES)
    """Names the peer sent as never-indexed (RFC 7541 7.1.3): forward them the same way."""


@dataclass(slots=True)
class ResponseReceived(Event):
    """Client side: the final (non-1xx) response headers of one of our streams."""

    stream_id: int
    headers: Headers
    end_stream: bool = False
    never_indexed: frozenset[bytes] = field(default=NO_NAMES)


@dataclass(slots=True)
class TrailersReceived(Event):
    """A trailing header block; it always ends the peer's side of the stream."""

    stream_id: int
    headers: Headers
    never_indexed: frozenset[bytes] = field(default=NO_NAMES)


@dataclass(slots=True)
class DataReceived(Event):
    """DATA on a stream; acknowledge `flow_controlled_length` once the bytes are consumed.

    `data` is a memoryview into an immutable bytes object given to receive(): safe to keep,
    it keeps that buffer alive (bytes(data) detaches it). Padding is already removed from it
    but counted in `flow_controlled_length`.
    """

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int
    end_stream: bool = False


@dataclass(slots=True)
class StreamReset(Event):
    """A stream ended abruptly: by the peer's RST_STREAM (remote=True), by a stream error we
    answered with RST_STREAM (remote=False, `reason` says why), or, for our own streams above
    a GOAWAY's last stream id, as REFUSED_STREAM with remote=True (never processed: retry)."""

    stream_id: int
    error_code: int
    remote: bool
    reason: str = ""


@dataclass(slots=True)
class WindowUpdated(Event):
    """More may be sent: on this stream, or with stream_id 0 on every stream (the connection
    window grew, or a SETTINGS change enlarged every stream window)."""

    stream_id: int


@dataclass(slots=True)
class RemoteSettingsChanged(Event):
    """The peer's SETTINGS were applied (and ACKed); `changed` maps setting id to new value."""

    changed: dict[int, int]


@dataclass(slots=True)
class PingAckReceived(Event):
    """The answer to one of our PINGs."""

    data: bytes


@dataclass(slots=True)
class GoAwayReceived(Event):
    """The peer is closing: streams we opened above `last_stream_id` were never processed.

    `debug` is the peer's raw text: escape it before it reaches any log.
    """

    last_stream_id: int
    error_code: int
    debug: bytes


@dataclass(slots=True)
class ConnectionTerminated(Event):
    """We found a connection error: a GOAWAY with `error_code` is queued, input is ignored from
    now on, and every stream of the connection is dead. Flush data_to_send(), then close."""

    error_code: int
    reason: str
