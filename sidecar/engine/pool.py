"""HTTP/2 client connections to one upstream: opened lazily, filled up to the peer's
MAX_CONCURRENT_STREAMS, more of them (up to `connections`) when all are full, dropped
when lost or drained by a GOAWAY, reopened by the next stream that needs one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque

from sidecar.engine.client import UpstreamConnection
from sidecar.engine.limits import EngineLimits
from sidecar.errors import UpstreamUnavailableError

UPSTREAM_LIMITS = EngineLimits(max_concurrent_streams=0)  # we accept no pushed streams


def parse_address(address: str) -> tuple[str | None, str, int]:
    """(unix path, host, port) of a gRPC target address: `unix:///p`, `unix:/p`, `unix:p`,
    `dns:///host:port`, `host:port` or `[v6]:port`."""
    if address.startswith("unix:"):
        rest = address[5:]
        if rest.startswith("//"):
            rest = rest[2:]
        return rest, "localhost", 0
    if address.startswith("dns:"):
        address = address[4:].lstrip("/")
        if "/" in address:  # dns://resolver/host:port: the resolver is not used
            address = address.split("/", 1)[1]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return None, host.strip("[]"), int(port)


class UpstreamPool:
    """Connections to one address for streams of target `name`."""

    def __init__(self, name: str, address: str, connections: int,
                 limits: EngineLimits = UPSTREAM_LIMITS) -> None:
        self.name = name
        self._path, host, port = parse_address(address)
        self._host, self._port = host, port
        self.authority = (host if self._path is not None else f"{host}:{port}").encode()
        self._max = max(1, connections)
        self._limits = limits
        self._conns: list[UpstreamConnection] = []
        self._connecting: asyncio.Future[None] | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def ready(self) -> UpstreamConnection | None:
        """A connection with room for a stream now, without waiting."""
        for conn in self._conns:
            if conn.usable:
                return conn
        return None

    async def connection(self) -> UpstreamConnection:
        """A connection with room for a stream: an open one, a new one, or the first to
        free a stream. Raises UpstreamUnavailableError naming the target when it cannot
        connect."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise UpstreamUnavailableError(f"target {self.name!r}: closing")
            conn = self.ready()
            if conn is not None:
                return conn
            live = sum(1 for c in self._conns if c.alive and not c.h2.goaway_received)
            if self._connecting is not None or live < self._max:
                if self._connecting is None:
                    self._connecting = asyncio.ensure_future(self._connect())
                    self._connecting.add_done_callback(self._connected)
                await asyncio.shield(self._connecting)
            else:
                waiter = loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._path is not None:
                _, conn = await loop.create_unix_connection(
                    lambda: UpstreamConnection(self._limits, self._changed), self._path)
            else:
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self._limits, self._changed),
                    self._host, self._port)
        except OSError as e:
            raise UpstreamUnavailableError(
                f"target {self.name!r} unreachable: {_reason(e)}") from e
        if self._closed:
            conn.close()
            return
        self._conns.append(conn)

    def _connected(self, future: asyncio.Future[None]) -> None:
        self._connecting = None
        if not future.cancelled():
            future.exception()  # retrieved here; every waiter gets it through the shield

    def _changed(self, conn: UpstreamConnection) -> None:
        if not conn.alive:
            with contextlib.suppress(ValueError):
                self._conns.remove(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def stats(self) -> list[dict[str, int]]:
        return [{"streams": len(c.streams)} for c in self._conns]

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()
        self._changed_all()

    def _changed_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


def _reason(e: OSError) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, FileNotFoundError):
        return "socket not found"
    if isinstance(e, socket.gaierror):
        return "name not resolved"
    if isinstance(e, PermissionError):
        return "permission denied"
    return "connection failed"
