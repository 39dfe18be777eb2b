"""Listeners: the daemon's own HTTP/2 server on a Unix socket.

One `CallerConnection` (an asyncio Protocol around a server-role H2Connection) per
accepted caller; each stream goes, by its `:path`, to the transparent proxy
(`services/frame_proxy.py`), to a unary method the daemon answers itself
(`services/native.py`: HttpProxy, Publisher, Health/Check), or to a streaming method it
serves itself (`services/native_stream.py`: Health/Watch, reflection v1 and v1alpha).
No grpcio server is involved: the daemon process does not load grpcio at all.
`start()`, `update(listener, key)`, `stop(grace)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

from sidecar.config import Listener
from sidecar.context import build_context
from sidecar.engine.connection import H2Connection
from sidecar.engine.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    Headers,
    PingAckReceived,
    RequestReceived,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from sidecar.engine.frames import MAX_STREAM_ID, ErrorCode
from sidecar.engine.limits import EngineLimits
from sidecar.engine.peer import Peer, peer_of
from sidecar.engine.status_block import error_block
from sidecar.engine.transport import H2Protocol
from sidecar.errors import ListenerError, shown
from sidecar.listeners import _umask_for, prepare_socket_path
from sidecar.runtime import Runtime
from sidecar.services import native, native_stream
from sidecar.services.frame_proxy import FrameProxy
from sidecar.services.health import HealthReporter
from sidecar.services.http_proxy import HttpProxyService
from sidecar.services.publisher import PublisherService
from sidecar.services.reflection import Reflection
from sidecar.status import StatusCode
from sidecar.telemetry.hub import Telemetry

log = logging.getLogger("sidecar.engine")

# The daemon's own services: a method under these it does not serve is UNIMPLEMENTED,
# never forwarded to a target.
OWN_PREFIXES = (b"/grpc.health.v1.Health/", b"/grpc.reflection.", b"/sidecar.v1.")
DRAIN_PING = b"drain..."
DRAIN_PING_WAIT = 1.0  # seconds for the drain PING's answer before the final GOAWAY
CLOSE_WAIT = 1.0  # seconds closing connections may flush before they are dropped
STOPPING = "listener stopping: call not finished within drain_timeout"


class CallerStream(Protocol):
    """What happens on one caller stream."""

    def caller_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None: ...
    def caller_reset(self) -> None: ...
    def caller_abort(self, message: str) -> None: ...


class Writable(Protocol):
    """A stream waiting for the caller to take its answers."""

    def writable(self) -> None: ...


class CallerConnection(H2Protocol):
    """One caller's connection: streams dispatched by `:path`."""

    def __init__(self, listener: EngineListener) -> None:
        super().__init__(H2Connection(False, listener.limits))
        self.streams: dict[int, CallerStream] = {}
        self.idle_since = time.monotonic()
        self.draining = False
        self._listener = listener
        self._final_goaway: asyncio.TimerHandle | None = None
        self._writable_waiters: dict[int, Writable] = {}
        self.peer: Peer | None = None  # the caller's credentials, read once at accept

    def connection_made(self, transport: object) -> None:
        listener = self._listener
        if len(listener.connections) >= listener.listener.max_connections:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.peer = peer_of(transport)
        listener.connections.add(self)
        super().connection_made(transport)
        if listener.stopping:
            self.drain()

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
                else:
                    handler.caller_data(event.data, event.flow_controlled_length,
                                        event.end_stream)
            elif cls is RequestReceived:
                assert isinstance(event, RequestReceived)
                # A handler may answer at once (`finish` inside dispatch): the placeholder
                # it then removes tells us not to keep it.
                stream_id = event.stream_id
                streams[stream_id] = _OPENING
                handler = self._listener.dispatch(self, event)
                if streams.get(stream_id) is _OPENING:
                    streams[stream_id] = handler
            elif cls is WindowUpdated:
                assert isinstance(event, WindowUpdated)
                self.window_opened(event.stream_id)
                if self._writable_waiters:
                    self._wake_writable()
            elif cls is TrailersReceived:
                assert isinstance(event, TrailersReceived)
                handler = streams.get(event.stream_id)
                if handler is not None:
                    handler.caller_data(b"", 0, True)
            elif cls is StreamReset:
                assert isinstance(event, StreamReset)
                self.drop_pending(event.stream_id)
                self._writable_waiters.pop(event.stream_id, None)
                handler = streams.pop(event.stream_id, None)
                if handler is not None:
                    handler.caller_reset()
                    self._stream_gone()
            elif cls is PingAckReceived:
                assert isinstance(event, PingAckReceived)
                if event.data == DRAIN_PING:
                    self._send_final_goaway()
            elif cls is GoAwayReceived:
                if not streams:
                    self.close_transport()
            elif cls is ConnectionTerminated:
                self.flush_now()
                self._lose()
                self.close_transport(abort=self.paused)

    def blocked(self, stream_id: int) -> bool:
        """True while our answers on `stream_id` wait for the caller (flow control closed,
        or its socket not read)."""
        return self.paused or stream_id in self._pending

    def wait_writable(self, stream_id: int, waiter: Writable) -> None:
        """Call `waiter.writable()` once the caller has taken some of what waits."""
        self._writable_waiters[stream_id] = waiter

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._writable_waiters:
            self._wake_writable()

    def _wake_writable(self) -> None:
        waiters = self._writable_waiters
        for stream_id in [sid for sid in waiters if not self.blocked(sid)]:
            waiters.pop(stream_id).writable()

    def flush_now(self) -> None:
        """Write even while paused: the last bytes of a connection that is ending."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            out = self.h2.data_to_send()
            if out:
                transport.write(out)

    def finish(self, stream_id: int, request_open: bool) -> None:
        """The answer on `stream_id` is complete (queued); a request still streaming is
        stopped with RST_STREAM NO_ERROR, as RFC 9113 section 8.1 allows."""
        if self.streams.pop(stream_id, None) is None:
            return
        self._writable_waiters.pop(stream_id, None)
        if request_open and stream_id not in self._pending:
            self.reset(stream_id, ErrorCode.NO_ERROR)
        self._stream_gone()

    def _stream_gone(self) -> None:
        if not self.streams:
            self.idle_since = time.monotonic()
            if self.draining and self._final_goaway is None:
                self.close_transport()

    def drain(self) -> None:
        """GOAWAY in two steps: first "no new streams soon" (last id 2^31-1) and a PING, then,
        once the PING is answered (every stream the caller sent before it has arrived), the
        real last stream id. Streams received until then are served."""
        if self.draining or self.h2.closed:
            return
        self.draining = True
        self.h2.goaway(ErrorCode.NO_ERROR, MAX_STREAM_ID)
        self.h2.ping(DRAIN_PING)
        self.flush()
        self._final_goaway = self._loop.call_later(DRAIN_PING_WAIT, self._send_final_goaway)

    def _send_final_goaway(self) -> None:
        if self._final_goaway is None:
            return
        self._final_goaway.cancel()
        self._final_goaway = None
        if not self.h2.closed:
            self.h2.goaway(ErrorCode.NO_ERROR)
            self.flush()
        if not self.streams:
            self.close_transport()

    def close_idle(self) -> None:
        if not self.h2.closed:
            self.h2.goaway(ErrorCode.NO_ERROR)
        self.close_transport()

    def abort_streams(self, message: str) -> None:
        """The drain deadline passed: the final GOAWAY now, UNAVAILABLE on every stream; the
        connection closes once their answers are queued (`_stream_gone`)."""
        if self._final_goaway is not None:
            self._send_final_goaway()
        elif not self.draining:
            self.draining = True
            if not self.h2.closed:
                self.h2.goaway(ErrorCode.NO_ERROR)
                self.flush()
        for handler in list(self.streams.values()):
            handler.caller_abort(message)
        if not self.streams:
            self.close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose()
        self._listener.connections.discard(self)
        self._listener.connection_gone()

    def _lose(self) -> None:
        if self._final_goaway is not None:
            self._final_goaway.cancel()
            self._final_goaway = None
        streams, self.streams = self.streams, {}
        self._writable_waiters.clear()
        self.release_acks()
        for handler in streams.values():
            handler.caller_reset()


class EngineListener:
    """One listener on one Unix socket: the proxy and the daemon's own services."""

    def __init__(
        self,
        listener: Listener,
        key: str,
        max_message: int,
        runtime: Callable[[], Runtime],
        health: HealthReporter,
        telemetry: Telemetry,
    ) -> None:
        self.listener = listener
        self.key = key
        self.limits = EngineLimits()
        self.connections: set[CallerConnection] = set()
        self.stopping = False
        self.proxy = FrameProxy(listener.name, runtime, telemetry)
        self.http = HttpProxyService(listener.name, runtime, telemetry)
        self.publisher = PublisherService(listener.name, runtime, telemetry)
        self._native = native.methods(self.http, self.publisher, health.state)
        reflection = Reflection()
        self._streaming = {
            b"/grpc.health.v1.Health/Watch": (
                "/grpc.health.v1.Health/Watch",
                health.state.watch_method()),
            **reflection.methods(),
        }
        self._max_message = max_message
        self._held = native.HeldBytes(self._request_buffer(listener))
        self._server: asyncio.AbstractServer | None = None
        self._bound = False
        self._idle_task: asyncio.Task[None] | None = None
        self._all_gone = asyncio.Event()

    async def start(self) -> None:
        path = self.listener.socket
        key = f"{self.key}.socket"
        prepare_socket_path(path, key)
        loop = asyncio.get_running_loop()
        try:
            with _umask_for(self.listener.mode):
                self._server = await loop.create_unix_server(
                    lambda: CallerConnection(self), path)
            self._bound = True
            os.chmod(path, self.listener.mode)
        except OSError as e:
            raise ListenerError(f"{key}: cannot listen on {path}: {e.strerror or e}") from e
        self._idle_task = asyncio.ensure_future(self._reap_idle())

    def update(self, listener: Listener, key: str) -> None:
        """Take a reloaded listener on the same socket: new name or mode apply at once."""
        if listener.mode != self.listener.mode:
            os.chmod(listener.socket, listener.mode)
        self.listener = listener
        self.key = key
        self._held.limit = self._request_buffer(listener)
        for service in (self.proxy, self.http, self.publisher):
            service.listener = listener.name

    def _request_buffer(self, listener: Listener) -> int:
        """`max_request_buffer`, at least one request of the largest message the socket takes."""
        return max(listener.max_request_buffer, self._max_message)

    def stats(self) -> dict[str, int | bool]:
        """Caller-side load for /status: counts and config only, nothing a peer sent."""
        connections = self.connections
        return {
            "connections": len(connections),
            "streams": sum(len(conn.streams) for conn in connections),
            "max_connections": self.listener.max_connections,
            "draining": self.stopping,
        }

    def dispatch(self, conn: CallerConnection, event: RequestReceived) -> CallerStream:
        headers = event.headers
        path = b""
        method = b""
        for name, value in headers:  # the pseudo-headers come first
            if name[:1] != b":":
                break
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
        if method != b"POST" or path[:1] != b"/":
            return Unimplemented(conn, event.stream_id, path, event.end_stream, method)
        found = self._native.get(path)
        if found is not None:
            return native.NativeUnary(conn, event.stream_id, headers, event.end_stream,
                                      found[0], found[1], self._max_message, self._refused,
                                      self._held)
        streaming = self._streaming.get(path)
        if streaming is not None:
            return native_stream.NativeStream(conn, event.stream_id, headers, event.end_stream,
                                              streaming[0], streaming[1], self._max_message)
        if path.startswith(OWN_PREFIXES):
            return Unimplemented(conn, event.stream_id, path, event.end_stream)
        return self.proxy.stream(conn, event.stream_id, headers, path, event.end_stream)

    def _refused(self, method: str, headers: Headers, code: StatusCode) -> None:
        """Access log (and metrics) for a native call answered before its handler ran."""
        metadata, _ = native.caller_metadata(headers)
        ctx = build_context(metadata, self.listener.identity)
        telemetry, name = self.proxy.telemetry, self.listener.name
        telemetry.begin(name, method, ctx)
        telemetry.end(name, method, None, None, code, time.monotonic(), ctx)

    def connection_gone(self) -> None:
        if self.stopping and not self.connections:
            self._all_gone.set()

    async def stop(self, grace: float | None) -> None:
        """GOAWAY to every caller, serve streams already received for `grace` seconds,
        answer the rest UNAVAILABLE, close, remove the socket file."""
        self.stopping = True
        if self._idle_task is not None:
            self._idle_task.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        if not self.connections:
            self._all_gone.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_gone.wait(), grace or 0)
        for conn in list(self.connections):
            conn.abort_streams(STOPPING)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_gone.wait(), CLOSE_WAIT)
        for conn in list(self.connections):
            conn.close_transport(abort=True)
        if self._bound:
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listener.socket)

    async def _reap_idle(self) -> None:
        """GOAWAY and close connections that had no stream for `idle_timeout` seconds."""
        while True:
            timeout = self.listener.idle_timeout
            await asyncio.sleep(min(max(timeout / 4, 0.05), 30.0))
            limit = time.monotonic() - timeout
            for conn in list(self.connections):
                if not conn.streams and conn.idle_since < limit:
                    conn.close_idle()



class _Opening:
    """Stands in for a stream's handler while dispatch creates it."""

    __slots__ = ()

    def caller_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        raise AssertionError("no event reaches a stream while it is dispatched")

    def caller_reset(self) -> None:
        pass

    def caller_abort(self, message: str) -> None:
        pass


_OPENING = _Opening()


class Unimplemented:
    """A method under the daemon's own services that it does not serve, or a request that
    is no gRPC call (not a POST, or a :path that is not /service/method): answered
    UNIMPLEMENTED, never proxied."""

    __slots__ = ()

    def __init__(self, conn: CallerConnection, stream_id: int, path: bytes,
                 end_stream: bool, method: bytes = b"POST") -> None:
        name = path.decode("latin-1", "replace")
        if method != b"POST":
            message = (f"not a gRPC call: :method {shown(method.decode('latin-1'))} "
                       "(gRPC calls are POST)")
        elif path[:1] != b"/":
            message = f"not a gRPC call: :path {shown(name)} (gRPC's is /service/method)"
        else:
            message = f"the daemon does not serve {shown(name)}"
        conn.send_trailers(stream_id, error_block(
            StatusCode.UNIMPLEMENTED.number, message, False))
        conn.finish(stream_id, not end_stream)

    def caller_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        pass  # never called: the stream is finished before dispatch returns

    def caller_reset(self) -> None:
        pass

    def caller_abort(self, message: str) -> None:
        pass
