"""The daemon's own streaming methods on the engine (Health/Watch, server reflection).

A `NativeStream` is one caller stream: request messages are cut from the caller's DATA
(gRPC framing, each bounded by `limits.max_message`) and handed one by one to its
`Session`, which answers with `send()` and ends the call with `finish()`. Back-pressure
both ways: while the caller does not take our answers (stream or connection flow control
closed, or its socket not read), no further request is handed over and the request bytes
are not acknowledged, so the caller's own window bounds what it can make us hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from sidecar.engine.events import Headers
from sidecar.engine.status_block import error_block
from sidecar.services.frame_proxy import parse_timeout
from sidecar.services.native import OK_TRAILERS, PREFIX, RESPONSE_HEADERS
from sidecar.status import StatusCode

if TYPE_CHECKING:
    from sidecar.engine.server import CallerConnection


class Session:
    """What a streaming method does with its call; every hook runs on the loop, in order."""

    def on_message(self, message: Any) -> None:
        """A request message arrived."""

    def on_end(self) -> None:
        """The caller sent its last request message (half-close)."""

    def on_close(self) -> None:
        """The call is over (answered, reset, or its connection gone): release what it holds."""


class StreamMethod(NamedTuple):
    """A streaming method: how its requests are decoded and what serves one call."""

    decode: Callable[[bytes], Any]
    session: Callable[[NativeStream], Session]


class NativeStream:
    """One caller stream of a streaming method the daemon serves itself."""

    __slots__ = ("_buffer", "_conn", "_ended", "_finished", "_headers_sent", "_limit",
                 "_method", "_name", "_session", "_sid", "_timer", "_unacked")

    def __init__(self, conn: CallerConnection, stream_id: int, headers: Headers,
                 end_stream: bool, name: str, method: StreamMethod, max_message: int) -> None:
        self._conn = conn
        self._sid = stream_id
        self._name = name
        self._method = method
        self._limit = max_message
        self._buffer = bytearray()
        self._unacked = 0  # flow-controlled bytes received and not yet given back
        self._ended = False
        self._finished = False
        self._headers_sent = False
        self._timer = None
        timeout = _timeout(headers)
        if timeout is not None:
            self._timer = conn.loop.call_later(timeout, self._expire)
        self._session = method.session(self)
        if end_stream:
            self.caller_data(b"", 0, True)

    @property
    def name(self) -> str:
        """The method, `/package.Service/Method`, for messages."""
        return self._name

    # -- caller side ----------------------------------------------------------------------

    def caller_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        if self._finished:
            self._conn.acknowledge(self._sid, length)
            return
        self._buffer += data
        self._unacked += length
        if end_stream:
            self._ended = True
        self._deliver()

    def caller_reset(self) -> None:
        self._close()

    def caller_abort(self, message: str) -> None:
        """The listener's drain deadline passed."""
        self.finish(StatusCode.UNAVAILABLE, message)

    def writable(self) -> None:
        """The caller took some of our answers: go on with the requests held meanwhile."""
        if not self._finished:
            self._deliver()

    # -- answers --------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        """One response message (response headers go out before the first)."""
        if self._finished:
            return
        conn, sid = self._conn, self._sid
        if not self._headers_sent:
            self._headers_sent = True
            conn.send_headers(sid, RESPONSE_HEADERS)
        payload = message.SerializeToString()
        conn.send_data(sid, PREFIX.pack(0, len(payload)) + payload, False)

    def finish(self, code: StatusCode = StatusCode.OK, message: str = "") -> None:
        """End the call with this status (trailers, or a trailers-only response)."""
        if self._finished:
            return
        if code is StatusCode.OK and self._headers_sent:
            trailers = OK_TRAILERS
        else:
            trailers = error_block(code.number, message, self._headers_sent)
        self._headers_sent = True
        self._conn.send_trailers(self._sid, trailers)
        conn, sid, request_open = self._conn, self._sid, not self._ended
        self._close()
        conn.finish(sid, request_open)

    # -- inside ---------------------------------------------------------------------------

    def _deliver(self) -> None:
        """Hand over every complete request message while the caller reads our answers."""
        conn, sid, buffer = self._conn, self._sid, self._buffer
        while not self._finished:
            if conn.blocked(sid):
                conn.wait_writable(sid, self)
                return  # the rest stays unacknowledged until the caller reads
            if len(buffer) < PREFIX.size:
                break
            compressed, size = PREFIX.unpack_from(buffer)
            if compressed:
                self.finish(StatusCode.UNIMPLEMENTED,
                            f"{self._name}: compressed requests are not supported")
                return
            if size > self._limit:
                self.finish(StatusCode.RESOURCE_EXHAUSTED,
                            f"{self._name}: request message of {size} bytes is over the "
                            f"{self._limit}-byte limit (limits.max_message)")
                return
            end = PREFIX.size + size
            if len(buffer) < end:
                break
            payload = bytes(memoryview(buffer)[PREFIX.size:end])
            del buffer[:end]
            try:
                request = self._method.decode(payload)
            except DecodeError:
                self.finish(StatusCode.INTERNAL,
                            f"{self._name}: a request is not a valid message")
                return
            self._session.on_message(request)
        if self._finished:
            return
        if self._unacked:
            conn.acknowledge(sid, self._unacked)
            self._unacked = 0
        if self._ended:
            if buffer:
                self.finish(StatusCode.INTERNAL,
                            f"{self._name}: the request stream ended inside a message")
            else:
                self._session.on_end()

    def _expire(self) -> None:
        self._timer = None
        self.finish(StatusCode.DEADLINE_EXCEEDED, f"{self._name}: deadline exceeded")

    def _close(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer = bytearray()
        if self._unacked:
            self._conn.acknowledge(self._sid, self._unacked)
            self._unacked = 0
        self._session.on_close()


def _timeout(headers: Headers) -> float | None:
    for name, value in headers:
        if name == b"grpc-timeout":
            return parse_timeout(value)
    return None
