"""One HTTP/2 connection, client or server, sans-I/O: bytes in, events out, bytes to send.

The receiving half is `inbound.Inbound` (frames and RFC 9113 checks), the stream table and
header blocks are `header_blocks.HeaderBlocks`; this module adds the sending API.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable

from sidecar.engine.errors import (
    ConnectionClosedError,
    EngineError,
    StreamLimitError,
    StreamStateError,
)
from sidecar.engine.frames import (
    DEFAULT_WINDOW,
    FLAG_END_STREAM,
    MAX_STREAM_ID,
    PREFACE,
    ErrorCode,
    FrameType,
    SettingId,
    frame_header,
    goaway_frame,
    header_block_frames,
    ping_frame,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)
from sidecar.engine.inbound import Inbound
from sidecar.engine.lifecycle import CLOSED as CLOSED_CONNECTION
from sidecar.engine.limits import EngineLimits
from sidecar.engine.streams import (
    CLOSED,
    IDLE,
    SEND_DATA,
    SEND_END_STREAM,
    SEND_HEADERS,
    SEND_RST_STREAM,
    TRANSITIONS,
    Stream,
    StreamState,
)

_DATA = int(FrameType.DATA)


class H2Connection(Inbound):
    """One HTTP/2 connection in either role.

    receive() turns the peer's bytes into events and answers protocol errors itself; the
    send methods queue frames; data_to_send() hands over everything queued. Call initiate()
    first. Nothing here reads a socket, a clock (but `clock`, on RST_STREAM) or logs.
    """

    def __init__(
        self,
        client: bool,
        settings: EngineLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = settings if settings is not None else EngineLimits()
        super().__init__(client, limits, clock)
        self._initiated = False

    # -- lifecycle ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is CLOSED_CONNECTION:
            raise ConnectionClosedError("the connection is closed")

    @property
    def closed(self) -> bool:
        """True once a connection error or goaway(error) ended the connection."""
        return self._state is CLOSED_CONNECTION

    # -- output ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue our preface (client), SETTINGS and the connection window raise; call once."""
        if self._initiated:
            raise EngineError("initiate() was already called")
        self._initiated = True
        limits = self._limits
        if self.client:
            self._out.append(PREFACE)
        self._out.append(
            settings_frame(
                [
                    (SettingId.ENABLE_PUSH, 0),
                    (SettingId.MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
                    (SettingId.INITIAL_WINDOW_SIZE, limits.initial_window),
                    (SettingId.MAX_FRAME_SIZE, limits.max_frame_size),
                    (SettingId.MAX_HEADER_LIST_SIZE, limits.max_header_list_size),
                ]
            )
        )
        if limits.connection_window > DEFAULT_WINDOW:
            self._out.append(window_update_frame(0, limits.connection_window - DEFAULT_WINDOW))

    def data_to_send(self) -> bytes:
        """Everything queued so far, in order; the queue is emptied."""
        return b"".join(self.take_output())

    def take_output(self) -> list[bytes | bytearray | memoryview]:
        """What data_to_send() would join, as its pieces (DATA payloads are views of the
        caller's buffers): for a vectored write without the copy; the queue is emptied."""
        out = self._out
        self._control_pending = 0
        if not out:
            return out
        self._out = []
        return out

    @property
    def pending_control_frames(self) -> int:
        """Frames the peer made us queue since the last data_to_send() (see EngineLimits)."""
        return self._control_pending

    # -- streams --------------------------------------------------------------------------

    def next_stream_id(self) -> int:
        """Client: the id the next new stream must use (send_headers on it opens it)."""
        if not self.client:
            raise StreamStateError("a server opens no streams (push is disabled)")
        if self._next_local > MAX_STREAM_ID:
            raise StreamLimitError("stream ids are exhausted: open a new connection")
        return self._next_local

    def stream_state(self, stream_id: int) -> StreamState:
        """State of a stream (RFC 9113 section 5.1); forgotten streams are CLOSED."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream.state
        if self._is_idle(stream_id) or self._skipped(stream_id):
            return IDLE
        return CLOSED

    @property
    def open_outbound_streams(self) -> int:
        """Streams we opened that are not closed (they count against the peer's limit)."""
        return self._outbound_open

    @property
    def open_inbound_streams(self) -> int:
        """Streams the peer opened that are not closed."""
        return self._inbound_open

    @property
    def peer_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (2**32 - 1 until it sends one)."""
        return self._peer_max_streams

    @property
    def peer_max_header_list_size(self) -> int | None:
        """The peer's advisory SETTINGS_MAX_HEADER_LIST_SIZE, None when it sent none."""
        return self._peer_max_header_list

    @property
    def goaway_received(self) -> bool:
        """The peer sent GOAWAY: no new stream may be opened on this connection."""
        return self._goaway_received

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[tuple[bytes, bytes]],
        end_stream: bool = False,
        never_indexed: Collection[bytes] = (),
        unique: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """Send a header block (request, response or trailers); a client's new id opens a stream.

        Our own headers are not validated; names in `never_indexed` (and authorization) are
        encoded never-indexed; `unique` fields follow `headers`, as literals kept out of the
        HPACK table (hpack.py). The block is split into CONTINUATION frames by the peer's
        MAX_FRAME_SIZE.
        """
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_new_local(stream_id)
        elif (stream.state, SEND_HEADERS) not in TRANSITIONS:
            raise StreamStateError(f"stream {stream_id} cannot send headers in {stream.state.name}")
        block = self._codec.encode(headers, never_indexed, unique)
        if stream is None:
            stream = self._open_local(stream_id)
        self._out.extend(header_block_frames(stream_id, block, end_stream, self._peer_max_frame))
        if end_stream:
            self._apply_input(stream, SEND_END_STREAM)

    def send_trailers(
        self,
        stream_id: int,
        headers: Iterable[tuple[bytes, bytes]],
        never_indexed: Collection[bytes] = (),
    ) -> None:
        """Send trailers: a header block that ends our side of the stream."""
        self.send_headers(stream_id, headers, True, never_indexed)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> int:
        """Send as much of `data` as both windows allow; return how many bytes were taken.

        The caller keeps the rest and retries after a WindowUpdated event. END_STREAM is sent
        only with the last byte, so only when everything was taken (an empty `data` with
        end_stream=True always goes). `data` must not change until data_to_send().
        """
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None or (stream.state, SEND_DATA) not in TRANSITIONS:
            raise StreamStateError(f"stream {stream_id} cannot send DATA")
        size = len(data)
        allowed = min(size, self._conn_send_window, stream.send_window)
        if allowed <= 0:
            if size or not end_stream:
                return 0
            allowed = 0
        last = FLAG_END_STREAM if end_stream and allowed == size else 0
        out = self._out
        max_frame = self._peer_max_frame
        if allowed <= max_frame:
            out.append(frame_header(allowed, _DATA, last, stream_id))
            if allowed:
                out.append(data if allowed == size else memoryview(data)[:allowed])
        else:
            view = memoryview(data)
            position = 0
            while position < allowed:
                chunk = min(max_frame, allowed - position)
                flags = last if position + chunk == allowed else 0
                out.append(frame_header(chunk, _DATA, flags, stream_id))
                out.append(view[position : position + chunk])
                position += chunk
        self._conn_send_window -= allowed
        stream.send_window -= allowed
        if last:
            self._apply_input(stream, SEND_END_STREAM)
        return allowed

    def reset_stream(self, stream_id: int, code: int = ErrorCode.CANCEL) -> None:
        """Send RST_STREAM and forget the stream; the peer's late frames on it are dropped."""
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None:
            if self.stream_state(stream_id) is IDLE:
                raise StreamStateError(f"stream {stream_id} was never opened")
            return  # closed already: nothing may be sent on it (section 5.1)
        self._out.append(rst_stream_frame(stream_id, code))
        self._apply_input(stream, SEND_RST_STREAM)
        self._remember_quiet(stream_id)

    def ping(self, data: bytes) -> None:
        """Send a PING with 8 opaque bytes; its answer is a PingAckReceived event."""
        if len(data) != 8:
            raise ValueError("PING data must be 8 bytes")
        self._check_open()
        self._out.append(ping_frame(data))

    def goaway(
        self, code: int = ErrorCode.NO_ERROR, last_stream_id: int | None = None,
        debug: bytes = b"",
    ) -> None:
        """Send GOAWAY. NO_ERROR drains: streams up to `last_stream_id` (default: the last one
        processed) go on, newer peer streams are ignored. Any other code closes the connection."""
        self._check_open()
        last = self._last_processed if last_stream_id is None else last_stream_id
        self._out.append(goaway_frame(last, code, debug))
        if self._goaway_last is None or last < self._goaway_last:
            self._goaway_last = last
        if code != ErrorCode.NO_ERROR:
            self._close()

    # -- flow control ---------------------------------------------------------------------

    def acknowledge_received_data(self, stream_id: int, length: int) -> None:
        """The application consumed `length` flow-controlled bytes of a DataReceived.

        Our receive windows are replenished only through this (back-pressure), with a
        WINDOW_UPDATE once half a window is consumed. Acknowledge every DataReceived, even on
        a stream that has ended since, or the connection window shrinks for good.
        """
        if length < 0:
            raise ValueError("length must be >= 0")
        if self._state is CLOSED_CONNECTION or not length:
            return
        if length > self._conn_delivered:
            raise ValueError("acknowledging more than was received")
        self._conn_delivered -= length
        self._credit_connection(length)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if length > stream.delivered:
            raise ValueError(f"acknowledging more than stream {stream_id} received")
        stream.delivered -= length
        if not self._peer_may_send(stream):
            return
        stream.unacked += length
        if stream.unacked >= self._stream_update_at:
            self._out.append(window_update_frame(stream_id, stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def local_window(self, stream_id: int) -> int:
        """What the peer may still send us: on the connection (0) or on a stream."""
        if stream_id == 0:
            return self._conn_recv_window
        return self._stream(stream_id).recv_window

    def remote_window(self, stream_id: int) -> int:
        """What we may still send: on the connection (0), or on a stream (the smaller of the
        stream and connection windows; negative after the peer shrank its initial window)."""
        if stream_id == 0:
            return self._conn_send_window
        return min(self._conn_send_window, self._stream(stream_id).send_window)

    # -- helpers --------------------------------------------------------------------------

    def _stream(self, stream_id: int) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamStateError(f"stream {stream_id} is not open")
        return stream

    def _check_new_local(self, stream_id: int) -> None:
        if not self.client:
            raise StreamStateError(f"stream {stream_id} is not open (a server opens no streams)")
        if not stream_id & 1 or not self._next_local <= stream_id <= MAX_STREAM_ID:
            raise StreamStateError(f"stream {stream_id} is not a new client stream id")
        if self._goaway_received:
            raise StreamLimitError("the peer sent GOAWAY: open a new connection")
        if self._outbound_open >= self._peer_max_streams:
            raise StreamLimitError("the peer's MAX_CONCURRENT_STREAMS is reached")

    def _open_local(self, stream_id: int) -> Stream:
        stream = Stream(
            stream_id, TRANSITIONS[(IDLE, SEND_HEADERS)],
            self._peer_initial_window, self._limits.initial_window,
        )
        self._streams[stream_id] = stream
        self._note_opened(stream_id, self._next_local, remote=False)
        self._next_local = stream_id + 2
        self._outbound_open += 1
        return stream
