"""The I/O half shared by both sides: an asyncio Protocol around one H2Connection.

Bytes read are fed to the connection and its events handled in one batch; what the
connection queued is written once per batch (or once per loop turn when another
connection caused it). DATA that flow control does not take yet waits in a per-stream
queue, in order with the trailers behind it. Back-pressure crosses the proxy through
acknowledgements: bytes read on one connection are acknowledged (their window given back)
only once the other connection has taken them, and not while its transport is paused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from sidecar.engine.connection import H2Connection
from sidecar.engine.errors import EngineError
from sidecar.engine.events import Event, Headers
from sidecar.engine.frames import ErrorCode

WRITE_HIGH_WATER = 1024 * 1024  # transport bytes buffered before pause_writing
WRITE_LOW_WATER = 256 * 1024
VECTORED_WRITE = 64 * 1024  # queued bytes from which a flush is a writelines, not a join


class _Pending:
    """DATA of one stream waiting for flow control, then possibly its trailers."""

    __slots__ = ("chunks", "trailers")

    def __init__(self) -> None:
        # (data, end_stream, connection to acknowledge, its stream, bytes to acknowledge)
        self.chunks: deque[tuple[memoryview, bool, H2Protocol | None, int, int]] = deque()
        self.trailers: Headers | None = None


class H2Protocol(asyncio.Protocol):
    """One connection's I/O; subclasses handle the events (`handle_events`)."""

    def __init__(self, h2: H2Connection) -> None:
        self.h2 = h2
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport instances
        self.paused = False
        self._loop = asyncio.get_running_loop()
        self._flush_soon = False
        self._pending: dict[int, _Pending] = {}
        self._deferred_acks: list[tuple[H2Protocol, int, int]] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The connection's event loop (kept, so the hot path never asks asyncio for it)."""
        return self._loop

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.h2.initiate()
        self.flush()

    def data_received(self, data: bytes) -> None:
        events = self.h2.receive(data)
        if events:
            self.handle_events(events)
        self.flush()
        if _dirty:  # what this batch queued on other connections goes out now, not a turn later
            flush_dirty()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        acks, self._deferred_acks = self._deferred_acks, []
        for conn, stream_id, length in acks:
            conn.acknowledge(stream_id, length)
        self.flush()

    def handle_events(self, events: list[Event]) -> None:
        raise NotImplementedError

    # -- output ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the connection queued; nothing while the transport is paused, so a
        peer that does not read lets control frames pile up in the engine, which counts
        them (EngineLimits.max_pending_control_frames) and ends the connection."""
        self._flush_soon = False
        transport = self.transport
        if self.paused or transport is None or transport.is_closing():
            return
        write_out(transport, self.h2.take_output())

    def flush_soon(self) -> None:
        """Flush once the current batch is done: output caused by another connection's
        events (written at the end of that connection's `data_received`), or by a task
        (written at the next loop turn). Either way one write per connection per batch."""
        if not self._flush_soon:
            self._flush_soon = True
            if not _dirty:
                self._loop.call_soon(flush_dirty)
            _dirty.append(self)

    def acknowledge(self, stream_id: int, length: int) -> None:
        """Our peer's bytes on `stream_id` were taken by the other side: give the window back."""
        if length:
            self.h2.acknowledge_received_data(stream_id, length)
            self.flush_soon()

    def _acknowledge(self, conn: H2Protocol | None, stream_id: int, length: int) -> None:
        if conn is None or not length:
            return
        if self.paused:
            self._deferred_acks.append((conn, stream_id, length))
        else:
            conn.acknowledge(stream_id, length)

    def send_headers(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]],
                     end_stream: bool = False,
                     unique: Sequence[tuple[bytes, bytes]] = ()) -> None:
        try:
            self.h2.send_headers(stream_id, headers, end_stream, unique=unique)
        except EngineError:
            return
        self.flush_soon()

    def send_data(
        self, stream_id: int, data: bytes | memoryview, end_stream: bool,
        ack: H2Protocol | None = None, ack_stream: int = 0, ack_length: int = 0,
    ) -> None:
        """Send DATA in order; `ack`'s `ack_length` bytes of `ack_stream` are acknowledged
        once all of it was taken."""
        pending = self._pending.get(stream_id)
        if pending is None:
            try:
                taken = self.h2.send_data(stream_id, data, end_stream)
            except EngineError:  # the stream ended meanwhile: the bytes have nowhere to go
                self._acknowledge(ack, ack_stream, ack_length)
                return
            self.flush_soon()
            if taken == len(data):
                self._acknowledge(ack, ack_stream, ack_length)
                return
            pending = self._pending[stream_id] = _Pending()
            data = memoryview(data)[taken:]
        pending.chunks.append((memoryview(data), end_stream, ack, ack_stream, ack_length))

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Trailers after any DATA still waiting for flow control."""
        pending = self._pending.get(stream_id)
        if pending is None:
            self.send_headers(stream_id, headers, True)
        else:
            pending.trailers = headers

    def reset(self, stream_id: int, code: int = ErrorCode.CANCEL) -> None:
        """RST_STREAM; DATA still waiting is dropped (and acknowledged to its source)."""
        self.drop_pending(stream_id)
        try:
            self.h2.reset_stream(stream_id, code)
        except EngineError:
            return
        self.flush_soon()

    def drop_pending(self, stream_id: int) -> None:
        pending = self._pending.pop(stream_id, None)
        if pending is not None:
            for _, _, ack, ack_stream, ack_length in pending.chunks:
                self._acknowledge(ack, ack_stream, ack_length)

    def window_opened(self, stream_id: int) -> None:
        """A WindowUpdated event: retry what waits on that stream (0: on every stream)."""
        if not self._pending:
            return
        if stream_id:
            self._retry(stream_id)
        else:
            for waiting in list(self._pending):
                self._retry(waiting)

    def _retry(self, stream_id: int) -> None:
        pending = self._pending.get(stream_id)
        if pending is None:
            return
        chunks = pending.chunks
        h2 = self.h2
        while chunks:
            data, end_stream, ack, ack_stream, ack_length = chunks[0]
            try:
                taken = h2.send_data(stream_id, data, end_stream)
            except EngineError:
                self.drop_pending(stream_id)
                return
            if taken < len(data):
                if taken:
                    chunks[0] = (data[taken:], end_stream, ack, ack_stream, ack_length)
                    self.flush_soon()
                return
            chunks.popleft()
            self._acknowledge(ack, ack_stream, ack_length)
        del self._pending[stream_id]
        if pending.trailers is not None:
            self.send_headers(stream_id, pending.trailers, True)
        self.flush_soon()

    def close_transport(self, abort: bool = False) -> None:
        """Write what is queued and close (the transport flushes first); `abort`, or a
        peer that is not reading, drops the connection at once."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if abort or self.paused:
            transport.abort()
            return
        write_out(transport, self.h2.take_output())
        transport.close()

    def release_acks(self) -> None:
        """The connection is gone: acknowledge on the other side what waited for it."""
        self.paused = False
        acks, self._deferred_acks = self._deferred_acks, []
        for conn, stream_id, length in acks:
            conn.acknowledge(stream_id, length)
        for stream_id in list(self._pending):
            self.drop_pending(stream_id)


# Connections with output queued by another connection's batch or a task (flush_soon).
_dirty: list[H2Protocol] = []


def flush_dirty() -> None:
    """Write every connection's queued output (a flush may queue more: acknowledgements)."""
    while _dirty:
        connections = _dirty.copy()
        _dirty.clear()
        for conn in connections:
            if conn._flush_soon:
                conn.flush()


def write_out(transport: Any, parts: list[bytes | bytearray | memoryview]) -> None:
    """One write of a connection's queued frames: joined while small (one buffer is the
    cheapest syscall), as a vectored write once large, so DATA payloads are not copied."""
    if not parts:
        return
    if len(parts) == 1:
        transport.write(parts[0])
    elif sum(map(len, parts)) < VECTORED_WRITE:
        transport.write(b"".join(parts))
    else:
        transport.writelines(parts)


def describe_exc(exc: Any) -> str:
    """Our words for why a connection ended (an OSError's reason, never a peer's text)."""
    if exc is None:
        return "connection closed"
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror).lower()
    return "connection lost"
