"""A caller's stream relayed frame for frame to the daemon's internal grpc.aio server.

No resilience, no metadata changes: the internal server serves the same listener, so
identity and routing of the daemon's own services are what they are on grpcio.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sidecar.engine.events import Headers
from sidecar.engine.pool import UpstreamPool
from sidecar.errors import SidecarError

if TYPE_CHECKING:
    from sidecar.engine.client import UpstreamConnection
    from sidecar.engine.server import CallerConnection

UNAVAILABLE = 14


def error_block(code: int, message: str, headers_sent: bool,
                extra: Headers | None = None) -> Headers:
    """A gRPC status as trailers, or as a trailers-only response when no headers went out."""
    block: Headers = [] if headers_sent else [
        (b":status", b"200"), (b"content-type", b"application/grpc")]
    block.append((b"grpc-status", b"%d" % code))
    block.append((b"grpc-message", percent_encode(message)))
    if extra:
        block.extend(extra)
    return block


def percent_encode(text: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte %XX."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


class Relay:
    """Both halves of one relayed stream (caller side and internal-server side)."""

    __slots__ = ("_caller", "_ended", "_headers", "_headers_sent", "_pending", "_sid",
                 "_task", "_up", "_up_sid", "done")

    def __init__(self, caller: CallerConnection, stream_id: int, headers: Headers,
                 end_stream: bool, pool: UpstreamPool) -> None:
        self._caller = caller
        self._sid = stream_id
        self._headers = headers
        self._ended = end_stream
        self._headers_sent = False
        self._pending: list[tuple[memoryview | bytes, int, bool]] = []
        self._up: UpstreamConnection | None = None
        self._up_sid = 0
        self._task: asyncio.Future[None] | None = None
        self.done = False
        conn = pool.ready()
        if conn is not None:
            self._open(conn)
        else:
            self._task = asyncio.ensure_future(self._connect(pool))

    async def _connect(self, pool: UpstreamPool) -> None:
        try:
            conn = await pool.connection()
        except SidecarError as e:
            self._fail(str(e))
            return
        if not self.done:
            self._open(conn)

    def _open(self, conn: UpstreamConnection) -> None:
        self._up = conn
        self._up_sid = conn.open(self, self._headers, self._ended and not self._pending)
        pending, self._pending = self._pending, []
        for data, length, end in pending:
            conn.send_data(self._up_sid, data, end, self._caller, self._sid, length)

    # -- caller side ----------------------------------------------------------------------

    def caller_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        self._ended = self._ended or end_stream
        up = self._up
        if up is not None:
            up.send_data(self._up_sid, data, end_stream, self._caller, self._sid, length)
        else:
            self._pending.append((data, length, end_stream))

    def caller_reset(self) -> None:
        self.done = True
        if self._task is not None:
            self._task.cancel()
        if self._up is not None:
            self._up.finish(self._up_sid, cancel=True)
        for _, length, _ in self._pending:
            self._caller.acknowledge(self._sid, length)
        self._pending = []

    def caller_abort(self, message: str) -> None:
        self.caller_reset()
        self._caller.send_trailers(self._sid, error_block(UNAVAILABLE, message,
                                                          self._headers_sent))
        self._caller.finish(self._sid, not self._ended)

    # -- internal-server side -------------------------------------------------------------

    def up_response(self, headers: Headers, end_stream: bool) -> None:
        self._headers_sent = True
        self._caller.send_headers(self._sid, headers, end_stream)
        if end_stream:
            self._end()

    def up_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        self._caller.send_data(self._sid, data, end_stream, self._up, self._up_sid, length)
        if end_stream:
            self._end()

    def up_trailers(self, headers: Headers) -> None:
        self._caller.send_trailers(self._sid, headers)
        self._end()

    def up_reset(self, code: int) -> None:
        self.done = True
        self._caller.reset(self._sid, code)
        self._caller.finish(self._sid, False)

    def up_lost(self, reason: str) -> None:
        self._fail(f"daemon service unavailable: {reason}")

    def _fail(self, message: str) -> None:
        if self.done:
            return
        self._caller.send_trailers(self._sid, error_block(UNAVAILABLE, message,
                                                          self._headers_sent))
        self._end()

    def _end(self) -> None:
        self.done = True
        self._caller.finish(self._sid, not self._ended)
