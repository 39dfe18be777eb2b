"""Connection state and the control frames: SETTINGS, PING, GOAWAY, WINDOW_UPDATE,
RST_STREAM, PRIORITY, PUSH_PROMISE, plus the bookkeeping every frame handler shares."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.engine.errors import ConnectionViolation, StreamViolation
from sidecar.engine.events import (
    ConnectionTerminated,
    Event,
    GoAwayReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    StreamReset,
    WindowUpdated,
)
from sidecar.engine.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    FLAG_ACK,
    MAX_MAX_FRAME_SIZE,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PREFACE,
    SETTINGS_ACK,
    ErrorCode,
    SettingId,
    goaway_frame,
    parse_settings,
    ping_frame,
    rst_stream_frame,
    unpack_goaway,
    unpack_u32,
    window_update_frame,
)
from sidecar.engine.header_blocks import HeaderBlocks
from sidecar.engine.lifecycle import (
    AWAIT_PREFACE,
    CONNECTION_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
)
from sidecar.engine.limits import EngineLimits
from sidecar.engine.ratelimit import TokenBucket
from sidecar.engine.streams import RECV_RST_STREAM, RECV_WINDOW_UPDATE

_UNLIMITED = 2**32 - 1


class Control(HeaderBlocks):
    """Windows, the peer's settings, the output queue, and the control-frame handlers."""

    def __init__(self, client: bool, limits: EngineLimits, clock: Callable[[], float]) -> None:
        super().__init__(client, limits)
        self._clock = clock
        self._state = ConnectionState.AWAIT_SETTINGS if client else AWAIT_PREFACE
        self._preface_left = PREFACE
        self._out: list[bytes | bytearray | memoryview] = []
        self._control_pending = 0
        # Bytes of an incomplete frame, and how many are needed before it can be parsed.
        self._tail: list[bytes] = []
        self._tail_size = 0
        self._tail_need = 9
        self._max_frame_in = limits.max_frame_size
        rate = limits.max_resets_per_second
        self._resets = TokenBucket(rate, rate, clock())
        self._empty_frames = 0
        # Flow control: what we may send, and what the peer may send (as it sees it).
        self._conn_send_window = DEFAULT_WINDOW
        self._conn_recv_window = limits.connection_window
        self._conn_delivered = 0
        self._conn_unacked = 0
        self._conn_update_at = limits.connection_window // 2
        self._stream_update_at = max(1, limits.initial_window // 2)
        # The peer's settings (RFC 9113 initial values until its SETTINGS arrive).
        self._peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self._peer_max_streams = _UNLIMITED
        self._peer_max_header_list: int | None = None
        self._goaway_received = False

    def _on_priority(
        self, data: bytes, view: memoryview, start: int, length: int, flags: int,
        stream_id: int, events: list[Event],
    ) -> None:
        # Section 5.3.2: priority signals are ignored, but the frame is still checked.
        if not stream_id:
            raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if length != 5:
            self._priority_error(stream_id, ErrorCode.FRAME_SIZE_ERROR, "PRIORITY not 5 bytes")
        if unpack_u32(data, start)[0] & MAX_STREAM_ID == stream_id:
            self._priority_error(stream_id, ErrorCode.PROTOCOL_ERROR, "stream depends on itself")

    def _priority_error(self, stream_id: int, code: int, reason: str) -> None:
        # A stream error, but RST_STREAM may not be sent on an idle stream (section 6.4):
        # section 5.4.1 lets us end the connection instead.
        if self._is_idle(stream_id):
            raise ConnectionViolation(code, reason)
        raise StreamViolation(stream_id, code, reason)

    def _on_rst_stream(
        self, data: bytes, view: memoryview, start: int, length: int, flags: int,
        stream_id: int, events: list[Event],
    ) -> None:
        if not stream_id:
            raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if length != 4:
            raise ConnectionViolation(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes")
        self._count_reset()
        stream = self._streams.get(stream_id)
        if stream is None:
            self._refuse(stream_id, None, RECV_RST_STREAM)
            return
        self._apply_input(stream, RECV_RST_STREAM)
        events.append(StreamReset(stream_id, unpack_u32(data, start)[0], True))

    def _on_settings(
        self, data: bytes, view: memoryview, start: int, length: int, flags: int,
        stream_id: int, events: list[Event],
    ) -> None:
        if stream_id:
            raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if length:
                raise ConnectionViolation(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with payload")
            return
        if length % 6:
            raise ConnectionViolation(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6")
        if length // 6 > self._limits.max_settings_entries:
            raise ConnectionViolation(ErrorCode.ENHANCE_YOUR_CALM, "too many SETTINGS entries")
        changed: dict[int, int] = {}
        grew = False
        for identifier, value in parse_settings(data[start : start + length]):
            grew = self._apply_setting(identifier, value) or grew
            changed[identifier] = value
        self._queue_control(SETTINGS_ACK)
        events.append(RemoteSettingsChanged(changed))
        if grew:
            events.append(WindowUpdated(0))

    def _on_push_promise(
        self, data: bytes, view: memoryview, start: int, length: int, flags: int,
        stream_id: int, events: list[Event],
    ) -> None:
        # We advertise ENABLE_PUSH=0, and a client never pushes (section 8.4).
        raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE while push is disabled")

    def _on_ping(
        self, data: bytes, view: memoryview, start: int, length: int, flags: int,
        stream_id: int, events: list[Event],
    ) -> None:
        if stream_id:
            raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if length != 8:
            raise ConnectionViolation(ErrorCode.FRAME_SIZE_ERROR, "PING not 8 bytes")
        opaque = data[start : start + 8]
        if flags & FLAG_ACK:
            events.append(PingAckReceived(opaque))
        else:
            self._queue_control(ping_frame(opaque, ack=True))

    def _on_goaway(
        self, data: bytes, view: memoryview, start: int, length: int, flags: int,
        stream_id: int, events: list[Event],
    ) -> None:
        if stream_id:
            raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if length < 8:
            raise ConnectionViolation(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, error_code = unpack_goaway(data, start)
        last &= MAX_STREAM_ID
        self._goaway_received = True
        events.append(GoAwayReceived(last, error_code, data[start + 8 : start + length]))
        # Section 6.8: our streams above `last` were never processed and may be retried.
        parity = 1 if self.client else 0
        for unprocessed in [s for s in self._streams.values() if s.stream_id > last]:
            if unprocessed.stream_id & 1 == parity:
                self._forget(unprocessed)
                events.append(
                    StreamReset(unprocessed.stream_id, ErrorCode.REFUSED_STREAM, True,
                                "above the peer's GOAWAY last stream id")
                )

    def _on_window_update(
        self, data: bytes, view: memoryview, start: int, length: int, flags: int,
        stream_id: int, events: list[Event],
    ) -> None:
        if length != 4:
            raise ConnectionViolation(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = unpack_u32(data, start)[0] & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._conn_send_window += increment
            if self._conn_send_window > MAX_WINDOW:
                raise ConnectionViolation(
                    ErrorCode.FLOW_CONTROL_ERROR, "connection window above 2^31-1"
                )
            events.append(WindowUpdated(0))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            self._refuse(stream_id, None, RECV_WINDOW_UPDATE)
            return
        if not increment:
            raise StreamViolation(stream_id, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise StreamViolation(
                stream_id, ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1"
            )
        events.append(WindowUpdated(stream_id))

    # -- settings -------------------------------------------------------------------------

    def _apply_setting(self, identifier: int, value: int) -> bool:
        """Apply one of the peer's settings; True when it enlarged the stream windows."""
        if identifier == SettingId.HEADER_TABLE_SIZE:
            self._codec.set_peer_table_size(value)
        elif identifier == SettingId.ENABLE_PUSH:
            if value > 1 or (value == 1 and self.client):
                raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "invalid ENABLE_PUSH")
        elif identifier == SettingId.MAX_CONCURRENT_STREAMS:
            self._peer_max_streams = value
        elif identifier == SettingId.INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise ConnectionViolation(
                    ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1"
                )
            delta = value - self._peer_initial_window
            self._peer_initial_window = value
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ConnectionViolation(
                        ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1"
                    )
            return delta > 0
        elif identifier == SettingId.MAX_FRAME_SIZE:
            if not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_MAX_FRAME_SIZE:
                raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
            self._peer_max_frame = value
        elif identifier == SettingId.MAX_HEADER_LIST_SIZE:
            self._peer_max_header_list = value
        return False

    # -- shared bookkeeping ---------------------------------------------------------------

    def _advance(self, event: ConnectionInput) -> None:
        new = CONNECTION_TRANSITIONS.get((self._state, event))
        if new is None:
            raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        self._state = new

    def _terminate(self, error_code: int, reason: str, events: list[Event]) -> None:
        self._out.append(goaway_frame(self._last_processed, error_code, reason.encode()))
        self._close()
        events.append(ConnectionTerminated(error_code, reason))

    def _close(self) -> None:
        self._advance(ConnectionInput.CLOSE)
        self._streams.clear()
        self._tail = []
        self._tail_size = 0
        self._block_parts = []
        self._block_stream = 0

    def _stream_error(self, exc: StreamViolation, events: list[Event]) -> None:
        stream_id = exc.stream_id
        self._count_reset()
        self._queue_control(rst_stream_frame(stream_id, exc.error_code))
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._forget(stream)
        self._remember_quiet(stream_id)
        events.append(StreamReset(stream_id, exc.error_code, False, exc.reason))

    def _count_reset(self) -> None:
        if not self._resets.take(self._clock()):
            raise ConnectionViolation(ErrorCode.ENHANCE_YOUR_CALM, "too many stream resets")

    def _queue_control(self, frame: bytes) -> None:
        self._out.append(frame)
        self._control_pending += 1
        if self._control_pending > self._limits.max_pending_control_frames:
            raise ConnectionViolation(
                ErrorCode.ENHANCE_YOUR_CALM, "peer does not read its control frames"
            )

    def _empty_frame(self) -> None:
        self._empty_frames += 1
        if self._empty_frames > self._limits.max_empty_frames:
            raise ConnectionViolation(ErrorCode.ENHANCE_YOUR_CALM, "too many empty frames")

    def _credit_connection(self, length: int) -> None:
        unacked = self._conn_unacked + length
        if unacked >= self._conn_update_at:
            self._out.append(window_update_frame(0, unacked))
            self._conn_recv_window += unacked
            unacked = 0
        self._conn_unacked = unacked
