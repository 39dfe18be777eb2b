"""Events H2Connection.receive() returns: what the peer did, in wire order.

A stream's remote side has ended when one of its events says so: `end_stream=True` on
RequestReceived / ResponseReceived / DataReceived, or any TrailersReceived (trailers always
end the stream). There is no separate StreamEnded event.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]
NO_NAMES: frozenset[bytes] = frozenset()


class Event:
    """Base of every event.

    Each is a dataclass for its equality and repr, with an `__init__` of its own: the one
    `dataclass` writes is interpreted Python even in the compiled build (mypyc compiles
    only what is in the class body), and events are made for every frame."""

    __slots__ = ()


@dataclass(slots=True, init=False)
class HeadersReceived(Event):
    """What a stream's first header block says (RequestReceived, ResponseReceived)."""

    stream_id: int
    headers: Headers
    end_stream: bool
    # Names the peer sent as never-indexed (RFC 7541 7.1.3): forward them the same way.
    never_indexed: frozenset[bytes]

    def __init__(self, stream_id: int, headers: Headers, end_stream: bool = False,
                 never_indexed: frozenset[bytes] = NO_NAMES) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.end_stream = end_stream
        self.never_indexed = never_indexed


@dataclass(slots=True, init=False)
class RequestReceived(HeadersReceived):
    """Server side: a peer opened a stream with a valid request header block."""


@dataclass(slots=True, init=False)
class ResponseReceived(HeadersReceived):
    """Client side: the final (non-1xx) response headers of one of our streams."""


@dataclass(slots=True, init=False)
class TrailersReceived(Event):
    """A trailing header block; it always ends the peer's side of the stream."""

    stream_id: int
    headers: Headers
    never_indexed: frozenset[bytes]

    def __init__(self, stream_id: int, headers: Headers,
                 never_indexed: frozenset[bytes] = NO_NAMES) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.never_indexed = never_indexed


@dataclass(slots=True, init=False)
class DataReceived(Event):
    """DATA on a stream; acknowledge `flow_controlled_length` once the bytes are consumed.

    `data` is a memoryview into an immutable bytes object given to receive(): safe to keep,
    it keeps that buffer alive (bytes(data) detaches it). Padding is already removed from it
    but counted in `flow_controlled_length`.
    """

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int
    end_stream: bool

    def __init__(self, stream_id: int, data: bytes | memoryview, flow_controlled_length: int,
                 end_stream: bool = False) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length
        self.end_stream = end_stream


@dataclass(slots=True, init=False)
class StreamReset(Event):
    """A stream ended abruptly: by the peer's RST_STREAM (remote=True), by a stream error we
    answered with RST_STREAM (remote=False, `reason` says why), or, for our own streams above
    a GOAWAY's last stream id, as REFUSED_STREAM with remote=True (never processed: retry)."""

    stream_id: int
    error_code: int
    remote: bool
    reason: str

    def __init__(self, stream_id: int, error_code: int, remote: bool, reason: str = "") -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote
        self.reason = reason


@dataclass(slots=True, init=False)
class WindowUpdated(Event):
    """More may be sent: on this stream, or with stream_id 0 on every stream (the connection
    window grew, or a SETTINGS change enlarged every stream window)."""

    stream_id: int

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


@dataclass(slots=True, init=False)
class RemoteSettingsChanged(Event):
    """The peer's SETTINGS were applied (and ACKed); `changed` maps setting id to new value."""

    changed: dict[int, int]

    def __init__(self, changed: dict[int, int]) -> None:
        self.changed = changed


@dataclass(slots=True, init=False)
class PingAckReceived(Event):
    """The answer to one of our PINGs."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True, init=False)
class GoAwayReceived(Event):
    """The peer is closing: streams we opened above `last_stream_id` were never processed.

    `debug` is the peer's raw text: escape it before it reaches any log.
    """

    last_stream_id: int
    error_code: int
    debug: bytes

    def __init__(self, last_stream_id: int, error_code: int, debug: bytes) -> None:
        self.last_stream_id = last_stream_id
        self.error_code = error_code
        self.debug = debug


@dataclass(slots=True, init=False)
class ConnectionTerminated(Event):
    """We found a connection error: a GOAWAY with `error_code` is queued, input is ignored from
    now on, and every stream of the connection is dead. Flush data_to_send(), then close."""

    error_code: int
    reason: str

    def __init__(self, error_code: int, reason: str) -> None:
        self.error_code = error_code
        self.reason = reason
