"""One HTTP/2 client connection to an upstream, carrying many streams.

Each stream has a handler (`UpstreamStream`) that gets the response side's events;
transport failures reach it as `lost(reason)` or a REFUSED_STREAM `reset`, both from
our own engine's events, never from a library's message text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sidecar.engine.connection import H2Connection
from sidecar.engine.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    ResponseReceived,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from sidecar.engine.limits import EngineLimits
from sidecar.engine.transport import H2Protocol, describe_exc


class UpstreamStream(Protocol):
    """What happens on one stream we opened."""

    def up_response(self, headers: Headers, end_stream: bool) -> None: ...
    def up_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None: ...
    def up_trailers(self, headers: Headers) -> None: ...
    def up_reset(self, code: int) -> None: ...
    def up_lost(self, reason: str) -> None: ...


class UpstreamConnection(H2Protocol):
    """A client-role connection; `on_change` tells the pool when capacity or liveness moved."""

    def __init__(self, limits: EngineLimits, on_change: Callable[[UpstreamConnection], None]):
        super().__init__(H2Connection(True, limits))
        self.streams: dict[int, UpstreamStream] = {}
        self.alive = False
        self._on_change = on_change

    @property
    def usable(self) -> bool:
        """Alive, not draining, with room for one more stream."""
        h2 = self.h2
        return (self.alive and not h2.goaway_received
                and h2.open_outbound_streams < h2.peer_max_concurrent_streams)

    def connection_made(self, transport: object) -> None:
        super().connection_made(transport)
        self.alive = True

    def open(self, handler: UpstreamStream, headers: Headers, end_stream: bool) -> int:
        """Start a stream (check `usable` first); its events go to `handler`."""
        stream_id = self.h2.next_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream)
        self.streams[stream_id] = handler
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
            elif cls is GoAwayReceived:
                self._on_change(self)
                if not streams:
                    self.close_transport()
            elif cls is ConnectionTerminated:
                self._lose("connection error")

    def _ended_stream(self) -> None:
        self._on_change(self)
        if self.h2.goaway_received and not self.streams:
            self.close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(describe_exc(exc))

    def close(self) -> None:
        self.alive = False
        self.close_transport()

    def _lose(self, reason: str) -> None:
        was_alive = self.alive
        self.alive = False
        streams, self.streams = self.streams, {}
        self.release_acks()
        for handler in streams.values():
            handler.up_lost(reason)
        if was_alive or streams:
            self._on_change(self)
        self.close_transport()
