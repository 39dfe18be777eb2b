"""One HTTP/2 client connection to an upstream, carrying many streams.

Each stream has a handler (`UpstreamStream`) that gets the response side's events;
transport failures reach it as `lost(reason)` or a REFUSED_STREAM `reset`, both from
our own engine's events, never from a library's message text. A connection counts as
connected once the peer's first SETTINGS arrived (`handshake`); with `keepalive`, one that
read nothing for that long is sent a PING, and one whose PING goes unanswered for
`keepalive_timeout` is closed, its streams lost ("keepalive timed out").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.engine.connection import H2Connection
from sidecar.engine.errors import EngineError
from sidecar.engine.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from sidecar.engine.limits import EngineLimits
from sidecar.engine.tls import ALPN, negotiated
from sidecar.engine.transport import H2Protocol, describe_exc

if TYPE_CHECKING:
    from sidecar.engine.endpoints import Endpoint

KEEPALIVE_PING = b"sidecar\x00"


class UpstreamStream(Protocol):
    """What happens on one stream we opened."""

    def up_response(self, headers: Headers, end_stream: bool) -> None: ...
    def up_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None: ...
    def up_trailers(self, headers: Headers) -> None: ...
    def up_reset(self, code: int) -> None: ...
    def up_lost(self, reason: str) -> None: ...


class UpstreamConnection(H2Protocol):
    """A client-role connection; `on_change` tells the pool when capacity or liveness moved."""

    def __init__(self, limits: EngineLimits, on_change: Callable[[UpstreamConnection], None],
                 endpoint: Endpoint | None = None, keepalive: float | None = None,
                 keepalive_timeout: float = 20.0) -> None:
        super().__init__(H2Connection(True, limits))
        self.streams: dict[int, UpstreamStream] = {}
        self.alive = False
        self.endpoint = endpoint
        # Resolved by the peer's first SETTINGS; failed with the reason if it never came.
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self._on_change = on_change
        self._keepalive = keepalive
        self._keepalive_timeout = keepalive_timeout
        self._heard = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        """Alive, not draining, with room for one more stream."""
        h2 = self.h2
        return (self.alive and not h2.goaway_received
                and h2.open_outbound_streams < h2.peer_max_concurrent_streams)

    def connection_made(self, transport: Any) -> None:
        alpn = negotiated(transport)
        if alpn is not None and alpn != ALPN:
            self.transport = transport
            chose = f"{alpn!r}" if alpn else "no protocol"
            self._fail_handshake(f"TLS peer chose {chose}, not ALPN h2")
            transport.abort()
            return
        super().connection_made(transport)
        self.alive = True

    def data_received(self, data: bytes) -> None:
        self._heard = True
        super().data_received(data)

    def open(self, handler: UpstreamStream, headers: Sequence[tuple[bytes, bytes]],
             end_stream: bool, unique: Sequence[tuple[bytes, bytes]] = ()) -> int:
        """Start a stream (check `usable` first); its events go to `handler`. `unique`:
        request fields new with every call (ids), sent after `headers` (hpack.py)."""
        stream_id = self.h2.next_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream, unique=unique)
        self.streams[stream_id] = handler
        if self.endpoint is not None:
            self.endpoint.streams += 1
        self.flush_soon()
        return stream_id

    def finish(self, stream_id: int, cancel: bool) -> None:
        """The handler is done with `stream_id`: reset it upstream when `cancel`."""
        if self.streams.pop(stream_id, None) is None:
            return
        if cancel:
            self.reset(stream_id)
        else:
            self.drop_pending(stream_id)
        self._ended_stream()

    def handle_events(self, events: list[Event]) -> None:
        streams = self.streams
        for event in events:
            cls = event.__class__
            if cls is DataReceived:
                assert isinstance(event, DataReceived)
                handler = streams.get(event.stream_id)
                if handler is None:
                    self.h2.acknowledge_received_data(
                        event.stream_id, event.flow_controlled_length)
                    continue
                if event.end_stream:
                    del streams[event.stream_id]
                handler.up_data(event.data, event.flow_controlled_length, event.end_stream)
                if event.end_stream:
                    self._ended_stream()
            elif cls is ResponseReceived:
                assert isinstance(event, ResponseReceived)
                handler = streams.get(event.stream_id)
                if handler is not None:
                    if event.end_stream:
                        del streams[event.stream_id]
                    handler.up_response(event.headers, event.end_stream)
                    if event.end_stream:
                        self._ended_stream()
            elif cls is TrailersReceived:
                assert isinstance(event, TrailersReceived)
                handler = streams.pop(event.stream_id, None)
                if handler is not None:
                    handler.up_trailers(event.headers)
                    self._ended_stream()
            elif cls is WindowUpdated:
                assert isinstance(event, WindowUpdated)
                self.window_opened(event.stream_id)
            elif cls is StreamReset:
                assert isinstance(event, StreamReset)
                self.drop_pending(event.stream_id)
                handler = streams.pop(event.stream_id, None)
                if handler is not None:
                    handler.up_reset(event.error_code)
                    self._ended_stream()
            elif cls is RemoteSettingsChanged:
                if not self.handshake.done():
                    self.handshake.set_result(None)
                    self._schedule_keepalive()
            elif cls is PingAckReceived:
                assert isinstance(event, PingAckReceived)
                if event.data == KEEPALIVE_PING:
                    self._schedule_keepalive()
            elif cls is GoAwayReceived:
                self._on_change(self)
                if not streams:
                    self.close_transport()
            elif cls is ConnectionTerminated:
                self._lose("connection error")

    # -- keepalive ------------------------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._keepalive is not None and self.alive:
            self._heard = False
            self._timer = self._loop.call_later(self._keepalive, self._keepalive_due)

    def _keepalive_due(self) -> None:
        """A keepalive interval passed: quiet connections get a PING and a deadline."""
        if self._heard:
            self._schedule_keepalive()
            return
        try:
            self.h2.ping(KEEPALIVE_PING)
        except EngineError:  # the connection closed meanwhile
            self._timer = None
            return
        self.flush()
        self._timer = self._loop.call_later(self._keepalive_timeout, self._keepalive_expired)

    def _keepalive_expired(self) -> None:
        self._timer = None
        self._lose("keepalive timed out")
        self.close_transport(abort=True)

    # -- ends -----------------------------------------------------------------------------

    def _ended_stream(self) -> None:
        if self.endpoint is not None:
            self.endpoint.streams -= 1
        self._on_change(self)
        if self.h2.goaway_received and not self.streams:
            self.close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = describe_exc(exc)
        self._fail_handshake(reason if exc is not None
                             else "connection closed before the HTTP/2 handshake")
        self._lose(reason)

    def close(self) -> None:
        self.alive = False
        self._fail_handshake("closing")
        self.close_transport()

    def _fail_handshake(self, reason: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(reason))
            self.handshake.exception()  # retrieved: the pool reads it when it awaits

    def _lose(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fail_handshake(reason)
        was_alive = self.alive
        self.alive = False
        streams, self.streams = self.streams, {}
        if self.endpoint is not None:
            self.endpoint.streams -= len(streams)
        self.release_acks()
        for handler in streams.values():
            handler.up_lost(reason)
        if was_alive or streams:
            self._on_change(self)
        self.close_transport()


class HandshakeError(Exception):
    """The connection ended before the peer's SETTINGS (or ALPN refused h2): our words."""
