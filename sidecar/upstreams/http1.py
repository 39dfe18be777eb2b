"""HTTP/1.1 client connections to one upstream, pooled, on uvloop Protocols.

What an HTTP target needs of a client and no more: keep-alive connections reused
newest first up to `max_connections` and closed after `keepalive` seconds idle; one
request at a time per connection (no pipelining); Content-Length, chunked and
close-delimited response bodies, bounded by `max_body` before they are buffered; TLS
(SNI and verification) and Unix sockets; one time limit per request covering the wait
for a connection, the connect, the send and the whole answer. Responses are parsed by
httptools (llhttp, Node's parser, as uvicorn uses it). aiohttp's client cost 132-142 us
of CPU per GET here against 27-28 us for this shape of client (one process, the same
upstream, 32 connections; see bench/README.md).

An error says whether the request may have reached the server (`sent`): a connect that
failed never did, so any method may be tried again; an answer cut short may have been
acted on. A reused connection that the server closed before answering (it timed out
its keep-alive as we sent) is tried once more on a new connection when the request is
safe to repeat.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools

MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers
_UNSAFE = re.compile("[\r\n\x00]")  # would end a header line early, or worse
_NO_BODY_STATUSES = frozenset({204, 304})  # RFC 9110 6.4.1: no body whatever the headers say


class HttpClientError(Exception):
    """No (whole) answer came. `sent`: the request may have reached the server."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


class BodyTooLarge(Exception):
    """The response's body is over the request's limit (nothing of it is kept)."""


@dataclass(slots=True, init=False)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    # Written out: the `__init__` dataclass writes stays interpreted in the compiled build.
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go, from a target's `base_url` (and `unix_socket`), parsed once."""

    host: str
    port: int
    tls: bool
    authority: str  # the Host header
    prefix: str  # the base_url's path, without its trailing "/"
    basic_auth: str | None  # from user:password in the base_url

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        default = 443 if tls else 80
        host = parts.hostname or "localhost"
        port = parts.port or default
        name = f"[{host}]" if ":" in host else host
        authority = name if port == default else f"{name}:{port}"
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(host, port, tls, authority, parts.path.rstrip("/"), auth)


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one origin (a host and port, or a Unix socket)."""

    def __init__(self, origin: Origin, *, unix_socket: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, server_name: str | None = None,
                 max_connections: int = 100, keepalive: float = 30.0,
                 dns_ttl: float = 300.0) -> None:
        self.origin = origin
        self._unix_path = unix_socket
        self._ssl = (ssl_context or ssl.create_default_context()) if origin.tls else None
        self._server_name = server_name or origin.host
        self._max = max(1, max_connections)
        self._keepalive = keepalive
        self._dns_ttl = dns_ttl
        self._idle: list[_Connection] = []  # newest last
        self._open = 0  # connections made and not yet lost
        self._opening = 0  # connects under way
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._addresses: list[tuple[Any, ...]] = []
        self._resolved_until = 0.0
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self.loop = asyncio.get_running_loop()

    # -- requests -------------------------------------------------------------------------

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: bytes, timeout: float, max_body: int,
                      replayable: bool) -> Response:
        """One exchange within `timeout` seconds. Raises HttpClientError, BodyTooLarge or
        TimeoutError. `replayable`: safe to send again if a reused connection was closed
        by the server before it answered."""
        head = self._head(method, target, headers, body)
        loop = self.loop
        deadline = loop.time() + timeout
        while True:
            conn = self._reuse()
            if conn is None:
                # wait_for, not asyncio.timeout: a native call runs without a Task
                # (services/native.py's Steps), and timeout needs the current one.
                conn = await asyncio.wait_for(self._connection(), deadline - loop.time())
            try:
                return await conn.exchange(head, body, max_body, method == "HEAD", deadline)
            except _Stale:
                if not replayable:
                    raise HttpClientError("connection closed by upstream", sent=True) from None

    def _head(self, method: str, target: str, headers: list[tuple[str, str]],
              body: bytes) -> bytes:
        lines = [f"{method} {self.origin.prefix}{target} HTTP/1.1\r\n"
                 f"Host: {self.origin.authority}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if self.origin.basic_auth is not None and not any(
                name.lower() == "authorization" for name, _ in headers):
            lines.append(f"Authorization: {self.origin.basic_auth}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # One count over the whole head instead of a search per name and value: a CR or
        # LF of a header adds to the line ends; then find which one, to name it.
        ends = len(lines) + 1
        if text.count("\r") != ends or text.count("\n") != ends or "\x00" in text:
            for name, value in headers:
                if _UNSAFE.search(value) or _UNSAFE.search(name):
                    raise HttpClientError(f"header {name[:40]!r} holds CR, LF or NUL",
                                          sent=False)
        return text.encode("utf-8")

    # -- connections ----------------------------------------------------------------------

    def _reuse(self) -> _Connection | None:
        """The newest idle connection still fresh; older stale ones are closed."""
        idle = self._idle
        if not idle:
            return None
        fresh_since = self.loop.time() - self._keepalive
        while idle:
            conn = idle.pop()
            if conn.idle_since >= fresh_since and conn.transport is not None:
                return conn
            conn.close()
        return None

    async def _connection(self) -> _Connection:
        """A new connection, once there is room for one under `max_connections`."""
        while True:
            if self._closed:
                raise HttpClientError("closing", sent=False)
            conn = self._reuse()
            if conn is not None:
                return conn
            if self._open + self._opening < self._max:
                break
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._opening += 1
        try:
            return await self._connect()
        finally:
            self._opening -= 1
            self._wake()

    async def _connect(self) -> _Connection:
        loop = self.loop
        tls: dict[str, Any] = {}
        if self._ssl is not None:
            tls = {"ssl": self._ssl, "server_hostname": self._server_name}
        try:
            if self._unix_path is not None:
                _, conn = await loop.create_unix_connection(
                    lambda: _Connection(self), self._unix_path, **tls)
                return conn
            last: OSError | None = None
            for family, type_, proto, _, address in await self._resolve():
                sock = socket.socket(family, type_, proto)
                try:
                    sock.setblocking(False)
                    if family in (socket.AF_INET, socket.AF_INET6):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await loop.sock_connect(sock, address)
                except OSError as e:
                    sock.close()
                    last = e
                    continue
                except BaseException:
                    sock.close()
                    raise
                _, conn = await loop.create_connection(lambda: _Connection(self), sock=sock,
                                                       **tls)
                return conn
            raise last or OSError("no address")
        except (OSError, ssl.SSLError) as e:
            raise HttpClientError(connect_reason(e), sent=False) from e

    async def _resolve(self) -> list[tuple[Any, ...]]:
        """The origin's addresses, looked up again once `dns_ttl` has passed."""
        now = self.loop.time()
        if not self._addresses or now >= self._resolved_until:
            self._addresses = await self.loop.getaddrinfo(
                self.origin.host, self.origin.port, type=socket.SOCK_STREAM)
            self._resolved_until = now + self._dns_ttl
        return self._addresses

    def _release(self, conn: _Connection) -> None:
        """A connection finished an exchange and may be used again."""
        if self._closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._keepalive, self._expire_idle)
        self._wake()

    def _made(self) -> None:
        self._open += 1

    def _lost(self, conn: _Connection) -> None:
        self._open -= 1
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire_idle(self) -> None:
        self._sweep = None
        fresh_since = self.loop.time() - self._keepalive
        for conn in [c for c in self._idle if c.idle_since < fresh_since]:
            conn.close()
        if self._idle:
            oldest = min(c.idle_since for c in self._idle)
            self._sweep = self.loop.call_later(
                max(oldest - fresh_since, 0.01), self._expire_idle)

    def stats(self) -> dict[str, int]:
        return {"connections": self._open, "idle": len(self._idle)}

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in list(self._idle):
            conn.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


def _head_too_large() -> HttpClientError:
    return HttpClientError(f"response head over {MAX_HEAD} bytes", sent=True)


class _Stale(Exception):
    """A reused connection was closed by the server before any byte of the answer."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request written, its answer parsed as it arrives."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser: Any = None
        self._future: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the timer fires: at or before the exchange's deadline
        self._deadline = 0.0  # the exchange's
        self._used = False  # an exchange ran here before the one under way
        self._received = 0  # bytes of the answer so far, head included
        self._limit = 0
        self._head_only = False
        self._head_done = False
        self._informational = False
        self._status = 0
        self._length: int | None = None
        self._chunked = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0  # bytes of header names and values so far
        self._error: BaseException | None = None

    # -- the exchange ---------------------------------------------------------------------

    async def exchange(self, head: bytes, body: bytes, limit: int, head_only: bool,
                       deadline: float) -> Response:
        transport = self.transport
        if transport is None:
            raise _Stale
        loop = self.pool.loop
        future: asyncio.Future[Response] = loop.create_future()
        self._future = future
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._received = 0
        self._limit = limit
        self._head_only = head_only
        self._head_done = self._informational = self._chunked = False
        self._status = self._size = self._head_size = 0
        self._length = None
        self._headers = []
        self._body = []
        self._error = None
        self._deadline = deadline
        # A timer outlives its exchange (the next one's deadline is mostly later: it
        # re-arms when it fires) rather than one made and cancelled per exchange.
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        if len(body) <= 65536:
            transport.write(head + body if body else head)
        else:
            transport.writelines((head, body))
        try:
            return await future
        except BaseException:
            # Cancelled while the answer is under way: its bytes may still come, so the
            # connection is spent. (Once the answer is in, the connection may already
            # carry the next exchange: nothing here may touch it.)
            if self._future is future:
                self._fail(asyncio.CancelledError())
            raise

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.pool.loop.call_at(when, self._timed_out)
        self._timer_at = when

    def _timed_out(self) -> None:
        self._timer = None
        if self._future is None:
            return  # that exchange is over, and no other is under way
        if self._deadline > self._timer_at:
            self._arm(self._deadline)  # armed for an earlier exchange
        else:
            self._fail(TimeoutError())

    def _done(self, response: Response, reusable: bool) -> None:
        self._used = True
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(response)
        if reusable:
            self.pool._release(self)
        else:
            self.close()

    def _fail(self, error: BaseException) -> None:
        self._stop_timer()
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_exception(error)
        self.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- the Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.pool._made()

    def data_received(self, data: bytes) -> None:
        if self._future is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            self._fail(self._error or HttpClientError("malformed response", sent=True))
            return
        except httptools.HttpParserError as e:
            self._fail(HttpClientError(f"malformed response ({e})", sent=True))
            return
        # One read may carry a short head and a long body: the head's own bound is kept
        # header by header (on_header); this one stops a head that never ends, after
        # the read that took it past the bound.
        if not self._head_done and self._received > MAX_HEAD and self._future is not None:
            self._fail(_head_too_large())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # never made (asyncio calls this only after connection_made)
        self.transport = None
        self._stop_timer()
        self.pool._lost(self)
        if self._future is None:
            return
        if self._head_done and self._length is None and not self._chunked:
            self._end_message(False)  # a body delimited by the close (RFC 9112 6.3)
        elif self._received == 0 and self._used:
            self._fail(_Stale())
        else:
            self._fail(HttpClientError("connection closed by upstream", sent=True))

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # trailers of a chunked body: dropped, as before
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._error = _head_too_large()
            raise self._error
        self._headers.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            self._length = int(value)
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        if self._future is None:  # an answer nobody asked for
            self._error = HttpClientError("unsolicited response", sent=True)
            raise self._error
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                self._error = HttpClientError("upstream switched protocols", sent=True)
                raise self._error
            self._informational = True  # 103 Early Hints and the like: the answer follows
            self._headers, self._length, self._chunked = [], None, False
            return
        self._status = status
        self._head_done = True
        if self._head_only or status in _NO_BODY_STATUSES:
            if self._head_only:  # llhttp would wait for the body a HEAD answer never has
                keep = self._parser.should_keep_alive()
                self._parser = None
                self._end_message(keep)
            return
        if self._length is not None and self._length > self._limit:
            self._error = BodyTooLarge()
            raise self._error

    def on_body(self, chunk: bytes) -> None:
        if self._future is None:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._error = BodyTooLarge()
            raise self._error
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._future is not None:
            self._end_message(self._parser.should_keep_alive())

    def _end_message(self, reusable: bool) -> None:
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, value in self._headers]
        self._done(Response(self._status, headers, b"".join(self._body)), reusable)


def connect_reason(error: BaseException) -> str:
    """A short, safe reason for a failed connect."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return "certificate verify failed"
    if isinstance(error, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(error, socket.gaierror):
        return "name not resolved"
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno).lower()
    return "connection failed"
