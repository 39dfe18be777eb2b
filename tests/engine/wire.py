"""A scripted peer for the engine's tests: frames built by hyperframe or by hand, a fake clock."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from jh2._hazmat import Encoder

from sidecar.engine.connection import H2Connection
from sidecar.engine.events import Event, RequestReceived
from sidecar.engine.frames import PREFACE
from sidecar.engine.limits import EngineLimits

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Service/Call"),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]
MESSAGE = b"\x00\x00\x00\x00\x05hello"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Any frame, even an invalid one, from its parts."""
    length = len(payload)
    return struct.pack(">HBBBL", length >> 8, length & 0xFF, frame_type, flags, stream_id) + payload


class Peer:
    """The other side of an H2Connection, speaking raw frames with its own HPACK encoder."""

    def __init__(self) -> None:
        self.encoder = Encoder()

    def block(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        return bytes(self.encoder.encode([(n, v, False) for n, v in headers], huffman=False))

    def headers(
        self, stream_id: int, headers: Iterable[tuple[bytes, bytes]] = REQUEST,
        end_stream: bool = False, end_headers: bool = True,
    ) -> bytes:
        frame = HeadersFrame(stream_id, self.block(headers))
        if end_stream:
            frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return bytes(frame.serialize())


def data(stream_id: int, payload: bytes = MESSAGE, end_stream: bool = False, pad: int = 0) -> bytes:
    frame = DataFrame(stream_id, payload)
    if end_stream:
        frame.flags.add("END_STREAM")
    if pad:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return bytes(frame.serialize())


def continuation(stream_id: int, fragment: bytes, end_headers: bool = True) -> bytes:
    frame = ContinuationFrame(stream_id, fragment)
    if end_headers:
        frame.flags.add("END_HEADERS")
    return bytes(frame.serialize())


def settings(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    frame = SettingsFrame(0, settings=values or {})
    if ack:
        frame.flags.add("ACK")
    return bytes(frame.serialize())


def ping(opaque: bytes = b"12345678", ack: bool = False) -> bytes:
    frame = PingFrame(0, opaque)
    if ack:
        frame.flags.add("ACK")
    return bytes(frame.serialize())


def window_update(stream_id: int, increment: int) -> bytes:
    return raw_frame(0x8, 0, stream_id, struct.pack(">L", increment))


def rst_stream(stream_id: int, code: int = 0x8) -> bytes:
    return bytes(RstStreamFrame(stream_id, code).serialize())


def goaway(last_stream_id: int, code: int = 0, debug: bytes = b"") -> bytes:
    return bytes(
        GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code, additional_data=debug)
        .serialize()
    )


def parse(data: bytes) -> list[Frame]:
    """The frames in bytes an H2Connection sent (a client preface is skipped)."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    frames = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def server(limits: EngineLimits | None = None, clock: FakeClock | None = None) -> H2Connection:
    """A server past the handshake: preface and SETTINGS received, output drained."""
    conn = H2Connection(client=False, settings=limits, clock=clock or FakeClock())
    conn.initiate()
    conn.receive(PREFACE + settings())
    conn.data_to_send()
    return conn


def client(limits: EngineLimits | None = None, clock: FakeClock | None = None) -> H2Connection:
    """A client past the handshake: the server's SETTINGS received, output drained."""
    conn = H2Connection(client=True, settings=limits, clock=clock or FakeClock())
    conn.initiate()
    conn.receive(settings())
    conn.data_to_send()
    return conn


SMALL = EngineLimits(initial_window=65_535, connection_window=65_535)
"""Windows at the RFC default, so tests can fill them with a few frames."""


def open_request(conn: H2Connection, peer: Peer, stream_id: int = 1, end: bool = False) -> None:
    """Server side: the peer opens a stream with a valid request."""
    events = conn.receive(peer.headers(stream_id, REQUEST, end_stream=end))
    assert isinstance(events[0], RequestReceived)


def open_call(conn: H2Connection, end: bool = True) -> int:
    """Client side: open a stream with our request headers; return its id."""
    stream_id = conn.next_stream_id()
    conn.send_headers(stream_id, REQUEST, end_stream=end)
    conn.data_to_send()
    return stream_id


def of_type(events: list[Event], kind: type) -> list[Event]:
    return [event for event in events if isinstance(event, kind)]


def goaway_code(conn: H2Connection) -> int | None:
    """The error code of the GOAWAY the connection queued, None if it queued none."""
    codes = [f.error_code for f in parse(conn.data_to_send()) if isinstance(f, GoAwayFrame)]
    return codes[-1] if codes else None


def sent(conn: H2Connection) -> list[Frame]:
    return parse(conn.data_to_send())


def connection_error(conn: H2Connection, events: list[Event]) -> int:
    """The code of the connection error the events end with (GOAWAY queued, input refused)."""
    from sidecar.engine.events import ConnectionTerminated

    assert events, "no events"
    last = events[-1]
    assert isinstance(last, ConnectionTerminated), events
    assert goaway_code(conn) == last.error_code
    assert conn.closed
    assert conn.receive(ping()) == []
    return last.error_code


def stream_error(conn: H2Connection, events: list[Event]) -> tuple[int, int]:
    """(stream id, code) of the stream error in the events, checked against the RST_STREAM sent."""
    from sidecar.engine.events import ConnectionTerminated, StreamReset

    assert not of_type(events, ConnectionTerminated), events
    resets = [e for e in events if isinstance(e, StreamReset) and not e.remote]
    assert len(resets) == 1, events
    frames = [f for f in sent(conn) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in frames] == [
        (resets[0].stream_id, resets[0].error_code)
    ]
    assert not conn.closed
    return resets[0].stream_id, resets[0].error_code
