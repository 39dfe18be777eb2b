"""The upstream pool's waits, in one process: a real listening socket, a real loop, no daemon."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from sidecar.engine.client import UpstreamConnection
from sidecar.engine.events import Headers
from sidecar.engine.pool import UpstreamPool

# An empty SETTINGS frame from the server... with MAX_CONCURRENT_STREAMS (0x3) = 1.
_SETTINGS_ONE_STREAM = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x01"
_REQUEST: Headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/t.S/M"),
                     (b":authority", b"t"), (b"content-type", b"application/grpc")]


class _Stream:
    """A stream opened only to take a connection's one stream slot."""

    def up_response(self, headers: Headers, end_stream: bool) -> None: ...
    def up_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None: ...
    def up_trailers(self, headers: Headers) -> None: ...
    def up_reset(self, code: int) -> None: ...
    def up_lost(self, reason: str) -> None: ...


class _Upstream:
    """Sends a SETTINGS allowing one stream, then reads whatever comes until closed."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(_SETTINGS_ONE_STREAM)
        while await reader.read(65536):
            pass

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            await writer.wait_closed()


def test_a_stream_asking_in_the_turn_a_connect_ends_gets_a_new_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two streams ask for a connection in the loop turn where the upstream's SETTINGS end
    a connect (as a caller's HEADERS can, read in the same turn), each taking the one stream
    the upstream allows. The first gets that connection; the second must get a new one. The
    pool once found the finished connect still recorded there, awaited it (which does not
    yield) and spun for ever with the loop blocked."""
    taken: list[asyncio.Future[UpstreamConnection]] = []
    handshake_seen = UpstreamConnection.data_received

    def data_received(self: UpstreamConnection, data: bytes) -> None:
        before = self.handshake.done()
        handshake_seen(self, data)
        if not before and self.handshake.done() and not taken:
            taken.extend(asyncio.ensure_future(take(pool)) for _ in range(2))
            asked.set()

    async def take(pool: UpstreamPool) -> UpstreamConnection:
        conn = await pool.connection(5.0)
        conn.open(_Stream(), _REQUEST, False)
        return conn

    async def scenario() -> tuple[int, int]:
        nonlocal asked
        asked = asyncio.Event()
        upstream = _Upstream()
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        nonlocal pool
        pool = UpstreamPool("orders", f"127.0.0.1:{port}", connections=2)
        try:
            pool.warm()  # the connect the two streams meet as it ends
            await asyncio.wait_for(asked.wait(), 5.0)
            first, second = await asyncio.wait_for(asyncio.gather(*taken), 5.0)
            return len({id(first), id(second)}), pool.stats()["connections"]
        finally:
            await pool.close()
            server.close()
            await upstream.close()
            await server.wait_closed()

    pool: Any = None
    asked: Any = None
    monkeypatch.setattr(UpstreamConnection, "data_received", data_received)
    result: list[tuple[int, int]] = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(scenario())),
                              daemon=True)
    worker.start()
    worker.join(10.0)
    assert not worker.is_alive(), "the pool's loop is blocked (a wait that never yields)"
    assert result == [(2, 2)]  # two streams, two connections
