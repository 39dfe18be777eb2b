"""Upstream HTTP targets: one pool of HTTP/1.1 connections per target (http1.py).

An upstream status (404, 503, ...) is data for the caller; only a failure
to get an answer is an error. Bodies are bounded by `max_body` both ways,
and a response over it is refused before it is read.

Health: with a `health` section, its check decides. Without one, connects do:
a failed connect makes the target unhealthy until a later one succeeds, and
while no calls come, a plain connect on the health check's default schedule
(`HttpHealth`) probes it. Either way the first verdict is known when `start`
returns, so a down target is one warning at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sidecar.config import IDEMPOTENT_METHODS, HttpHealth, HttpTarget, Tls
from sidecar.context import CallContext, caller_metadata
from sidecar.errors import (
    InvalidRequestError,
    LimitExceededError,
    SidecarError,
    UpstreamConnectError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from sidecar.resilience.backoff import retry_after
from sidecar.resilience.policy import Attempt
from sidecar.telemetry.redaction import NO_SECRETS, Redactor
from sidecar.upstreams.http1 import (
    BodyTooLarge,
    Http1Pool,
    HttpClientError,
    Origin,
    connect_reason,
)

log = logging.getLogger("sidecar.http")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Hop-by-hop headers (RFC 9110 7.6.1) and those the client computes itself.
_HOP = frozenset({
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization", "host", "content-length",
})
_RETRY_STATUSES = frozenset({502, 503, 504})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # a token (RFC 9110 5.6.2)
# What may not go out raw: in a path a space or any control character; in a header
# value a control character other than tab (RFC 9110 5.5), NUL, CR and LF above all.
_PATH_REFUSED = re.compile(r"[\x00-\x20\x7f]")
_VALUE_REFUSED = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CONNECT_PROBE = HttpHealth()  # the schedule of a target without a health section
# Seconds before the caller's deadline we answer ourselves (at most a fifth of the time
# left): enough for the answer to reach the caller on a busy machine.
_REPLY_MARGIN = 0.2


# Their `__init__`s are written out: the one `dataclass` writes stays interpreted in the
# compiled build, and both are made per call.
@dataclass(slots=True, init=False)
class HttpResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


@dataclass(slots=True, init=False)
class HttpCall:
    """A validated request, ready for one or more attempts."""

    method: str
    target: str  # the path and query, below the base_url's own path
    headers: list[tuple[str, str]]
    body: bytes
    idempotent: bool
    trace_at: int  # where `traceparent` is in headers: each attempt sends its own

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                 idempotent: bool, trace_at: int) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.idempotent = idempotent
        self.trace_at = trace_at


class HttpUpstream:
    """A pooled HTTP/1.1 client for one target, and what is known of its health."""

    kind = "http"

    def __init__(self, target: HttpTarget, redact: Redactor = NO_SECRETS) -> None:
        self.target = target
        self._redact = redact
        self._pool: Http1Pool | None = None
        self._healthy = True  # judged before start() returns
        self._attempts = 0  # calls' attempts: while they come, connect probes are not needed
        self._checker: asyncio.Task[None] | None = None
        # Never from the caller: hop-by-hop, the target's own headers, the injected names.
        self._drop = _HOP | target.metadata.reserved | {n.lower() for n, _ in target.headers}
        self._retry_statuses = _RETRY_STATUSES | {
            c for c in target.retry.on if isinstance(c, int)
        }

    async def start(self) -> None:
        target = self.target
        pool = target.pool
        tls = target.tls
        self._pool = Http1Pool(
            Origin.parse(target.base_url), unix_socket=target.unix_socket,
            ssl_context=_ssl_context(tls), server_name=tls.server_name if tls else None,
            max_connections=min(pool.max_connections, pool.max_per_host),
            keepalive=pool.keepalive, dns_ttl=pool.dns_ttl,
        )
        if self.target.health is not None:
            self._set_health(*await self._check())
            self._checker = asyncio.create_task(self._check_health(self.target.health))
        else:
            self._set_health(*await self._connect())
            self._checker = asyncio.create_task(self._probe_connects())

    async def close(self, timeout: float) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
            self._checker = None
        if self._pool is not None:
            await self._pool.close()

    def health(self) -> bool:
        return self._healthy

    def stats(self) -> dict[str, Any]:
        where = _without_user(self.target.base_url)  # never show credentials
        if self.target.unix_socket:
            where = f"{where} via unix:{self.target.unix_socket}"
        return {"kind": self.kind, "address": self._redact(where)}

    def prepare(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
        ctx: CallContext,
    ) -> HttpCall:
        """Validate the caller's request and add the target's and the contract's headers.

        Anything that could not go out as a well-formed HTTP/1.1 request is
        INVALID_ARGUMENT naming the field, before any attempt: a method that is
        not one of `METHODS`, a path that does not start with "/" or holds a
        space or a control character (refused rather than percent-encoded: the
        caller encodes its own path, and the upstream must see exactly the
        path it sent), a header name that is not an HTTP token, or a header
        value with a control character other than tab. Neither the path nor a
        value is echoed in the message: either may carry a secret.
        """
        name = self.target.name
        method = method.upper()
        if method not in METHODS:
            raise InvalidRequestError(
                f"target {name!r}: invalid method {method[:40]!r} "
                f"(one of {', '.join(sorted(METHODS))})"
            )
        if not path.startswith("/"):
            raise InvalidRequestError(f"target {name!r}: invalid path: must start with '/'")
        if (bad := _PATH_REFUSED.search(path)) is not None:
            raise InvalidRequestError(
                f"target {name!r}: invalid path: {_describe(bad.group())} at offset "
                f"{bad.start()} (percent-encode it)"
            )
        if len(body) > self.target.max_body:
            raise LimitExceededError(
                f"target {name!r}: request body of {len(body)} bytes is over max_body "
                f"({self.target.max_body})"
            )
        for key, value in headers:
            if not _HEADER_NAME.match(key):
                raise InvalidRequestError(
                    f"target {name!r}: invalid header name {key[:40]!r} (not an HTTP token)"
                )
            if (bad := _VALUE_REFUSED.search(value)) is not None:
                raise InvalidRequestError(
                    f"target {name!r}: invalid value of header {key[:40]!r}: "
                    f"{_describe(bad.group())} at offset {bad.start()}"
                )
        out = caller_metadata(headers, self._drop)
        out.extend(self.target.headers)
        out.extend(ctx.identity_metadata(self.target.metadata))
        trace_at = out.index(("traceparent", ctx.traceparent))
        if (self.target.forward_authorization and ctx.authorization
                and not any(k.lower() == "authorization" for k, _ in out)):
            out.append(("Authorization", ctx.authorization))
        idempotent = method in IDEMPOTENT_METHODS or self.target.retry.non_idempotent
        return HttpCall(method, path, out, body, idempotent, trace_at)

    async def attempt(
        self, call: HttpCall, time_left: float, deadline: float
    ) -> tuple[Attempt, HttpResult | SidecarError]:
        """One try: the verdict for the resilience layer and the answer (or error) so far.

        An attempt that would run into the caller's `deadline` is cut a little
        before it (at most a fifth of the time left, `_REPLY_MARGIN`), so that
        the caller gets DEADLINE_EXCEEDED naming the target rather than its own
        library's anonymous one.
        """
        assert self._pool is not None
        name = self.target.name
        self._attempts += 1
        until = deadline - time.monotonic()
        answer_by = until - min(_REPLY_MARGIN, until / 5)
        if answer_by <= 0:
            return (Attempt(ok=False),
                    UpstreamTimeoutError(f"target {name!r}: deadline exceeded"))
        caller_bound = answer_by <= time_left  # else `retry.per_try_timeout` ends it first
        try:
            response = await self._pool.request(
                call.method, call.target, call.headers, call.body, min(time_left, answer_by),
                self.target.max_body, call.idempotent)
        except BodyTooLarge:
            return Attempt(ok=False), LimitExceededError(
                f"target {name!r}: response body is over max_body "
                f"({self.target.max_body} bytes)")
        except TimeoutError:
            if caller_bound:
                return (Attempt(ok=False, fault=True),
                        UpstreamTimeoutError(f"target {name!r}: no answer before the "
                                             "call's deadline"))
            return (Attempt(ok=False, fault=True, retryable=call.idempotent),
                    UpstreamUnavailableError(
                        f"target {name!r}: attempt timed out (retry.per_try_timeout)"))
        except HttpClientError as e:
            if not e.sent:  # never reached the server: safe to repeat
                self._connected(False, e.reason)
                return (Attempt(ok=False, fault=True, retryable=True),
                        UpstreamConnectError(f"target {name!r} unreachable: {e.reason}"))
            return (Attempt(ok=False, fault=True, retryable=call.idempotent),
                    UpstreamUnavailableError(f"target {name!r}: {e.reason}"))
        self._connected(True)
        status = response.status
        headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP]
        retryable = call.idempotent and status in self._retry_statuses
        pushback = None
        if retryable:
            pushback = retry_after(
                next((v for k, v in headers if k.lower() == "retry-after"), None), time.time())
        return Attempt(ok=status < 500, fault=status >= 500, retryable=retryable,
                       pushback=pushback), HttpResult(status, headers, response.body)

    async def _check_health(self, health: HttpHealth) -> None:
        """The `health` section's check, every `interval` (the first ran in `start`)."""
        while True:
            await asyncio.sleep(health.interval)
            self._set_health(*await self._check())

    async def _check(self) -> tuple[bool, str | None]:
        """One GET of the health path: healthy, or not and why."""
        health = self.target.health
        assert health is not None and self._pool is not None
        try:
            response = await self._pool.request("GET", health.path, [], b"", health.timeout,
                                                self.target.max_body, True)
        except TimeoutError:
            return False, "health check timed out"
        except BodyTooLarge:
            return False, "health check answer over max_body"
        except HttpClientError as e:
            return False, e.reason
        if response.status < 400:
            return True, None
        return False, f"health check answered {response.status}"

    async def _probe_connects(self) -> None:
        """Without a health section: a plain connect every interval in which no call came."""
        seen = self._attempts
        while True:
            await asyncio.sleep(_CONNECT_PROBE.interval)
            if self._attempts == seen:
                self._set_health(*await self._connect())
            seen = self._attempts

    async def _connect(self) -> tuple[bool, str | None]:
        """Open and close one TCP (or Unix) connection: reachable, or not and why."""
        try:
            async with asyncio.timeout(_CONNECT_PROBE.timeout):
                if self.target.unix_socket is not None:
                    _, writer = await asyncio.open_unix_connection(self.target.unix_socket)
                else:
                    origin = Origin.parse(self.target.base_url)
                    _, writer = await asyncio.open_connection(origin.host, origin.port)
        except TimeoutError:
            return False, "connect timed out"
        except OSError as e:
            return False, connect_reason(e)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, None

    def _connected(self, ok: bool, reason: str | None = None) -> None:
        """A call's connect outcome: what judges a target with no health section."""
        if ok != self._healthy and self.target.health is None:
            self._set_health(ok, reason)

    def _set_health(self, healthy: bool, reason: str | None) -> None:
        """Record a verdict; a change is one log line (a warning, with the reason, when
        the target goes bad)."""
        if healthy == self._healthy:
            return
        self._healthy = healthy
        fields: dict[str, Any] = {"target": self.target.name}
        checked = self.target.health is not None
        if healthy:
            log.info("health check passing" if checked else "target reachable",
                     extra={"fields": fields})
        else:
            log.warning("health check failing" if checked else "target unreachable",
                        extra={"fields": {**fields, "reason": reason}})


def _describe(char: str) -> str:
    """A refused character, named so that a message never needs to show the text around it."""
    return "a space" if char == " " else f"control character 0x{ord(char):02x}"


def _without_user(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _ssl_context(tls: Tls | None) -> ssl.SSLContext | None:
    if tls is None:
        return None  # https:// base_urls verify against the system's roots
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
