"""HTTP/2 client connections to one upstream target, over its endpoints.

An address is one endpoint (`unix:`, an IP literal) or a host name resolved to several
(`dns:///host:port`, `host:port`), re-resolved once `dns_ttl` has passed. A new stream goes
to an endpoint chosen by power of two choices on in-flight streams, skipping ejected ones
(`endpoints.py` holds that policy, the reconnect backoff and the ejection, sans-I/O). Per
endpoint, connections are opened lazily, filled up to the peer's MAX_CONCURRENT_STREAMS,
more of them (up to `connections`) when all are full, dropped when lost or drained by a
GOAWAY. A connect is one attempt shared by every stream waiting for it; after a failure the
endpoint is not tried again before its backoff, and a caller whose deadline ends sooner is
failed at once (UNAVAILABLE, retryable) rather than kept waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.engine.client import HandshakeError, UpstreamConnection
from sidecar.engine.dns import (
    Resolver,
    is_literal,
    join,
    parse_address,
    split,
    static_endpoints,
    system_resolve,
)
from sidecar.engine.endpoints import Endpoint, EndpointPolicy, candidates, merge, power_of_two
from sidecar.engine.limits import EngineLimits
from sidecar.errors import UpstreamConnectError, UpstreamUnavailableError

# Upstreams may send frames of up to 64 KiB (the listeners keep 16 KiB, the protocol's
# default): a quarter of the frames to parse per byte relayed. Streaming 1 MiB messages
# from a grpc.aio upstream, six alternating pairs: 534 ms of CPU per 1000 MiB against 679,
# 1,278 MB/s against 1,142 (1 MiB frames gained no more, and every frame over a read's
# size is joined from its pieces). A caller still gets frames of the size it allows.
UPSTREAM_MAX_FRAME = 64 * 1024
UPSTREAM_LIMITS = EngineLimits(max_concurrent_streams=0,  # we accept no pushed streams
                               max_frame_size=UPSTREAM_MAX_FRAME)


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """How a pool connects: TLS, keepalive, DNS refresh, backoff and ejection."""

    keepalive: float | None = None  # seconds of quiet before a PING; None: no PINGs
    keepalive_timeout: float = 20.0
    dns_ttl: float = 300.0
    connect_timeout: float = 20.0  # TCP, TLS and the peer's first SETTINGS
    policy: EndpointPolicy = field(default_factory=EndpointPolicy)
    ssl: ssl.SSLContext | None = None
    server_name: str | None = None  # SNI, name verified, and :authority


class _Slot(Endpoint):
    """An endpoint with its connections and its connect in progress."""

    __slots__ = ("connecting", "conns", "removed")

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.conns: list[UpstreamConnection] = []
        self.connecting: asyncio.Future[None] | None = None
        self.removed = False

    def usable(self) -> UpstreamConnection | None:
        for conn in self.conns:
            if conn.usable:
                return conn
        return None

    def live(self) -> int:
        return sum(1 for c in self.conns if c.alive and not c.h2.goaway_received)


class UpstreamPool:
    """Connections to the endpoints of one address, for streams of target `name`."""

    def __init__(self, name: str, address: str, connections: int = 1,
                 limits: EngineLimits = UPSTREAM_LIMITS, *,
                 options: PoolOptions | None = None, resolve: Resolver = system_resolve,
                 on_health: Callable[[bool, str | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rand: random.Random | None = None) -> None:
        self.name = name
        self._options = options or PoolOptions()
        self._path, host, port = parse_address(address)
        self._host, self._port = host, port
        authority = host if self._path is not None else join(host, port)
        self.authority = (self._options.server_name or authority).encode()
        self._max = max(1, connections)
        self._limits = limits
        self._resolve = resolve
        self._on_health = on_health
        self._clock = clock
        self._rand = rand or random.Random()
        self._slots: list[_Slot] = []
        # A host name is resolved (first when a stream needs it), a path or an IP is not.
        statics = static_endpoints(address)
        self._resolved = self._path is None and not statics and not is_literal(host)
        if self._path is not None:
            self._slots.append(_Slot(f"unix:{self._path}"))
        elif statics:
            self._slots.extend(_Slot(a) for a in statics)
        elif not self._resolved:
            self._slots.append(_Slot(authority))
        self._resolve_at = 0.0 if self._resolved else float("inf")  # when to look it up again
        self._resolving: asyncio.Future[None] | None = None
        self._dns_error: str | None = None
        self._dns_failures = 0
        self._healthy = True
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._warming: asyncio.Future[None] | None = None
        self._closed = False

    # -- choosing a connection ------------------------------------------------------------

    def ready(self) -> UpstreamConnection | None:
        """A connection with room for a stream now, without waiting (None: ask connection())."""
        slots = self._slots
        if len(slots) == 1 and not self._resolved:
            return slots[0].usable()
        now = self._clock()
        if now >= self._resolve_at:
            return None
        slot = self._choose(now)
        return None if slot is None else slot.usable()

    async def connection(self, within: float | None = None) -> UpstreamConnection:
        """A connection with room for a stream: an open one, a new one, or the first to free
        a stream. Raises UpstreamUnavailableError naming the target when it cannot connect,
        at once when every endpoint is in backoff for longer than `within` seconds."""
        loop = asyncio.get_running_loop()
        started = self._clock()
        while True:
            if self._closed:
                raise UpstreamUnavailableError(f"target {self.name!r}: closing")
            now = self._clock()
            if self._resolved and now >= self._resolve_at:
                await self._refresh(wait=not self._slots, now=now, within=within, started=started)
                continue
            if not self._slots:  # the name did not resolve: retried after its backoff
                raise self._unreachable(self._dns_error or "name not resolved")
            slot = self._choose(now)
            if slot is None:  # every endpoint waits for its backoff
                soonest = min(self._slots, key=lambda s: s.retry_at)
                wait = soonest.retry_at - now
                if within is not None and wait > within - (now - started):
                    raise self._unreachable(soonest.last_error or "connection failed")
                await asyncio.sleep(wait)
                continue
            conn = slot.usable()
            if conn is not None:
                return conn
            if slot.connecting is not None or (slot.live() < self._max and slot.may_connect(now)):
                if slot.connecting is None:
                    slot.connecting = asyncio.ensure_future(self._connect(slot))
                    slot.connecting.add_done_callback(self._connected)
                await asyncio.shield(slot.connecting)
            else:  # its connections are full: the first stream to end makes room
                waiter = loop.create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)

    def _choose(self, now: float) -> _Slot | None:
        """The endpoint for a new stream; None while every endpoint waits for its backoff."""
        def can_take(slot: _Slot) -> bool:
            return bool(slot.conns) or slot.connecting is not None or slot.may_connect(now)

        return power_of_two(candidates(self._slots, now, can_take), self._rand)

    def _unreachable(self, reason: str) -> UpstreamConnectError:
        return UpstreamConnectError(f"target {self.name!r} unreachable: {reason}")

    # -- connecting -----------------------------------------------------------------------

    async def _connect(self, slot: _Slot) -> None:
        try:
            await self._open_connection(slot)
        finally:
            # Cleared before the task is done, not in a done callback: a waiter that runs
            # between the two would find it finished, await it without yielding, and spin.
            slot.connecting = None

    async def _open_connection(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        options = self._options
        made: list[UpstreamConnection] = []

        def factory() -> UpstreamConnection:
            conn = UpstreamConnection(self._limits, self._changed, slot, options.keepalive,
                                      options.keepalive_timeout)
            made.append(conn)
            return conn

        tls: dict[str, Any] = {}
        if options.ssl is not None:
            sni = options.server_name or (self._host if self._path is None else "localhost")
            tls = {"ssl": options.ssl, "server_hostname": sni}
        try:
            async with asyncio.timeout(options.connect_timeout):
                if self._path is not None:
                    await loop.create_unix_connection(factory, self._path, **tls)
                else:
                    host, port = split(slot.address)
                    await loop.create_connection(factory, host, port, **tls)
                await made[-1].handshake
        except (OSError, HandshakeError, TimeoutError) as e:
            for conn in made:
                conn.close_transport(abort=True)
            reason = _reason(e)
            slot.connect_failed(self._clock(), reason, options.policy, self._rand)
            self._note_health()
            raise self._unreachable(reason) from e
        conn = made[-1]
        if self._closed or slot.removed:
            conn.close()
            return
        slot.conns.append(conn)
        slot.connections += 1
        slot.connect_succeeded()
        self._note_health()

    @staticmethod
    def _connected(future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved here; every waiter gets it through the shield

    def _changed(self, conn: UpstreamConnection) -> None:
        slot = conn.endpoint
        if isinstance(slot, _Slot):
            if not conn.alive and conn in slot.conns:
                slot.conns.remove(conn)
                slot.connections -= 1
            elif slot.removed and not conn.streams:
                conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- resolving ------------------------------------------------------------------------

    async def _refresh(self, wait: bool, now: float, within: float | None,
                       started: float) -> None:
        """Re-resolve (one lookup shared by all); wait for it only when there is no
        endpoint yet. A failed lookup keeps the endpoints and is retried after a backoff."""
        if self._resolving is None:
            self._resolving = asyncio.ensure_future(self._lookup())
        if not wait:
            self._resolve_at = max(self._resolve_at, now + self._options.dns_ttl)
            return
        try:
            if within is None:
                await asyncio.shield(self._resolving)
            else:
                left = max(0.0, within - (now - started))
                await asyncio.wait_for(asyncio.shield(self._resolving), left)
        except TimeoutError:
            raise self._unreachable("name not resolved in time") from None
        if not self._slots:
            raise self._unreachable(self._dns_error or "name not resolved")

    async def _lookup(self) -> None:
        try:
            try:
                addresses = await self._resolve(self._host, self._port)
            except OSError as e:
                addresses, self._dns_error = [], _reason(e)
            now = self._clock()
            if not addresses:
                self._dns_error = self._dns_error or "name not resolved"
                self._dns_failures += 1
                self._resolve_at = now + self._options.policy.delay(self._dns_failures,
                                                                    self._rand)
                self._note_health()
                return
            self._dns_error = None
            self._dns_failures = 0
            self._resolve_at = now + self._options.dns_ttl
            self._slots, removed = merge(self._slots, addresses, _Slot)
            for slot in removed:
                slot.removed = True
                for conn in list(slot.conns):
                    if not conn.streams:
                        conn.close()
            self._note_health()
        finally:
            self._resolving = None

    # -- health and status ----------------------------------------------------------------

    def healthy(self) -> bool:
        """False once the name does not resolve, or every endpoint's last connect failed."""
        if not self._slots:
            return self._dns_error is None
        return any(s.connections or not s.failures for s in self._slots)

    def _note_health(self) -> None:
        healthy = self.healthy()
        if healthy != self._healthy:
            self._healthy = healthy
            if self._on_health is not None:
                reason = None if healthy else self._last_error()
                self._on_health(healthy, reason)

    def _last_error(self) -> str:
        if not self._slots:
            return self._dns_error or "name not resolved"
        return next((s.last_error for s in self._slots if s.last_error), "connection failed")

    def warm(self) -> None:
        """Connect in the background when nothing is connected (at most one try at a time,
        never during the backoff), so health is known before the first call."""
        if self._closed or self._warming is not None:
            return
        if any(s.conns or s.connecting is not None for s in self._slots):
            return
        self._warming = asyncio.ensure_future(self._warm())

    async def _warm(self) -> None:
        try:
            with contextlib.suppress(UpstreamUnavailableError):
                await self.connection(within=0.0)
        finally:
            self._warming = None

    def stats(self) -> dict[str, Any]:
        now, wall = self._clock(), time.time()
        return {
            "connections": sum(s.connections for s in self._slots),
            "streams": sum(s.streams for s in self._slots),
            "endpoints": [s.status(now, wall) for s in self._slots],
        }

    async def close(self) -> None:
        self._closed = True
        for task in (self._warming, self._resolving):
            if task is not None:
                task.cancel()
        for slot in self._slots:
            for conn in list(slot.conns):
                conn.close()
            slot.conns.clear()
            slot.connections = 0
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


def _reason(e: BaseException) -> str:
    if isinstance(e, HandshakeError):
        return str(e)
    if isinstance(e, TimeoutError):
        return "connect timed out"
    if isinstance(e, ssl.SSLCertVerificationError):
        return "certificate verify failed"
    if isinstance(e, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, FileNotFoundError):
        return "socket not found"
    if isinstance(e, socket.gaierror):
        return "name not resolved"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    return "connection failed"
