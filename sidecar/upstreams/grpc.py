"""Upstream gRPC targets: the frame engine's pool per target, and grpc.aio channels while a
listener still runs `engine: grpcio`.

With a frames listener, the target's `UpstreamPool` (sidecar/engine/pool.py) is created by
`start()`, closed by `close()`, and is what `health()`, `stats()` and the "target
unreachable" warning read. Channel calls are opened raw (bytes in, bytes out) so the
proxy never parses a message. A failed call is translated here: a transport failure becomes our
`UpstreamUnavailableError` naming the target; an upstream's own status is
passed back untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from sidecar.config import GrpcTarget
from sidecar.context import CallContext
from sidecar.errors import (
    LimitExceededError,
    SidecarError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from sidecar.resilience.policy import Attempt
from sidecar.telemetry.redaction import NO_SECRETS, Redactor

if TYPE_CHECKING:
    from sidecar.engine.pool import UpstreamPool

log = logging.getLogger("sidecar.grpc")
ENGINES = frozenset({"grpcio"})  # which listener engines reach the target, by default

_CACHE_LIMIT = 4096  # methods whose callables are kept per channel
# How grpc-core words failures that never reached the upstream application.
_TRANSPORT_FAILURE = re.compile(
    r"failed to connect|connections to all backends failing|DNS resolution failed"
    r"|Connection refused|No such file or directory|Connection reset|Socket closed"
    r"|Broken pipe|GOAWAY|keepalive watchdog timeout|Endpoint read failed",
    re.IGNORECASE,
)
_REASONS = (
    ("refused", "connection refused"),
    ("no such file", "socket not found"),
    ("dns resolution", "name not resolved"),
    ("reset", "connection reset"),
    ("socket closed", "connection closed"),
    ("broken pipe", "connection closed"),
    ("goaway", "connection closed by upstream"),
    ("keepalive", "keepalive timed out"),
)
_TOO_LARGE = re.compile(r"(Sent|Received) message larger than max \((\d+) vs\. (\d+)\)")
# Asked only of a channel failing to connect, for grpc-core's reason: it fails at once,
# without reaching the upstream (and were it to reach it, it is a harmless health check).
_PROBE = "/grpc.health.v1.Health/Check"
_PROBE_TIMEOUT = 1.0
_FAILING = grpc.ChannelConnectivity.TRANSIENT_FAILURE
_READY = grpc.ChannelConnectivity.READY


class GrpcUpstream:
    """Pooled channels to one gRPC target."""

    kind = "grpc"

    def __init__(self, target: GrpcTarget, redact: Redactor = NO_SECRETS,
                 engines: frozenset[str] = ENGINES) -> None:
        self.target = target
        self.engines = engines
        self.frames: UpstreamPool | None = None  # the frame engine's pool, from start()
        self.retry_on = frozenset(
            grpc.StatusCode[c] for c in target.retry.on if isinstance(c, str)
        )
        self._redact = redact
        self._channels: list[grpc.aio.Channel] = []
        self._callables: list[dict[str, Any]] = []
        self._next = 0
        self._reachable = True  # until every channel has failed to connect
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the frame pool and/or the channels and start connecting, watching for
        unreachability (the pool's connects decide when it is there)."""
        if "frames" in self.engines:
            self.frames = frame_pool(self.target, self._frames_health)
            self.frames.warm()
        if "grpcio" in self.engines:
            self._open_channels()
            self._watcher = asyncio.create_task(self._watch())

    def _open_channels(self) -> None:
        """The grpc.aio channels (without a grpcio listener, on the first channel call:
        the internal server of a frames listener still forwards a few methods)."""
        options = _channel_options(self.target)
        credentials = _credentials(self.target)
        for _ in range(self.target.pool.connections):
            if credentials is None:
                channel = grpc.aio.insecure_channel(self.target.address, options=options)
            else:
                channel = grpc.aio.secure_channel(self.target.address, credentials, options)
            self._channels.append(channel)
            self._callables.append({})

    async def close(self, timeout: float) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for channel in self._channels:
            await channel.close(grace=timeout)
        self._channels.clear()
        self._callables.clear()
        if self.frames is not None:
            await self.frames.close()

    def open(
        self, method: str, metadata: list[tuple[str, str | bytes]], timeout: float
    ) -> grpc.aio.StreamStreamCall:
        """Start a raw call on the next channel of the pool."""
        if not self._channels:
            self._open_channels()
        i = self._next = (self._next + 1) % len(self._channels)
        callables = self._callables[i]
        callable_ = callables.get(method)
        if callable_ is None:
            callable_ = self._channels[i].stream_stream(method)
            if len(callables) < _CACHE_LIMIT:
                callables[method] = callable_
        return callable_(metadata=metadata, timeout=timeout)

    def health(self) -> bool:
        """False while every channel is failing to connect. Asking also connects an idle
        channel, so health is known (and connections warm) before the first call."""
        pool = self.frames
        if pool is not None:
            pool.warm()
            return pool.healthy()
        failing = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return any(c.get_state(try_to_connect=True) != failing for c in self._channels)

    def stats(self) -> dict[str, Any]:
        states = [c.get_state(try_to_connect=False).name.lower() for c in self._channels]
        out: dict[str, Any] = {"kind": self.kind, "address": self._redact(self.target.address),
                               "connections": states}
        if self.frames is not None:
            frames = self.frames.stats()
            for endpoint in frames["endpoints"]:
                endpoint["address"] = self._redact(endpoint["address"])
            out["frames"] = frames
        return out

    def _frames_health(self, healthy: bool, reason: str | None) -> None:
        """The frame pool's reachability changed: one line each way, as the channels say."""
        name = self.target.name
        if healthy:
            log.info("target reachable", extra={"fields": {"target": name}})
        else:
            log.warning("target unreachable", extra={"fields": {
                "target": name, "reason": reason or "connection failed"}})

    async def _watch(self) -> None:
        """One warning, with grpc-core's reason, when every channel fails to connect
        (so a target that is down at start says so), one info line when one connects."""
        while True:
            states = [c.get_state(try_to_connect=True) for c in self._channels]
            if all(s is _FAILING for s in states) and self._reachable:
                self._reachable = False
                log.warning("target unreachable", extra={"fields": {
                    "target": self.target.name, "reason": await self._failure_reason()}})
            elif any(s is _READY for s in states) and not self._reachable:
                self._reachable = True
                log.info("target reachable", extra={"fields": {"target": self.target.name}})
            changes = [asyncio.ensure_future(c.wait_for_state_change(s))
                       for c, s in zip(self._channels, states, strict=True)]
            try:
                await asyncio.wait(changes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for change in changes:
                    change.cancel()

    async def _failure_reason(self) -> str:
        """Why the first channel cannot connect, in our words (never its address)."""
        try:
            await self._channels[0].unary_unary(_PROBE)(b"", timeout=_PROBE_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.UNAVAILABLE:
                return _reason(e.details() or "")
        return "connection failed"

    def translate(
        self, code: grpc.StatusCode, details: str | None, got_headers: bool, deadline_passed: bool
    ) -> SidecarError | None:
        """Our error for a failure of the daemon's own making, None for the upstream's status."""
        name = self.target.name
        text = details or ""
        if code is grpc.StatusCode.UNAVAILABLE and not got_headers:
            if _TRANSPORT_FAILURE.search(text):
                return UpstreamUnavailableError(
                    f"target {name!r} unreachable: {_reason(text)}"
                )
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED and deadline_passed:
            return UpstreamTimeoutError(f"target {name!r}: deadline exceeded")
        elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            m = _TOO_LARGE.search(text)
            if m:
                way = "request" if m[1] == "Sent" else "response"
                return LimitExceededError(
                    f"target {name!r}: {way} message of {m[2]} bytes is over the "
                    f"{m[3]}-byte limit (limits.max_message)"
                )
        return None


# Upstream faults: count against the breaker (DESIGN.md, "Breaker").
_FAULTS = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def classify(
    code: grpc.StatusCode, error: SidecarError | None, retry_on: frozenset[grpc.StatusCode]
) -> Attempt:
    """What an attempt's final status means to the resilience layer."""
    if code is grpc.StatusCode.OK:
        return Attempt(ok=True)
    if isinstance(error, LimitExceededError):
        return Attempt(ok=False)  # our own size limit: the caller's message, not a fault
    fault = code in _FAULTS
    retryable = code is grpc.StatusCode.UNAVAILABLE or code in retry_on
    return Attempt(ok=False, fault=fault, retryable=retryable)


def upstream_metadata(ctx: CallContext, target: GrpcTarget) -> list[tuple[str, str | bytes]]:
    """The caller's metadata plus the identity, ids and trace the contract injects."""
    metadata = [*ctx.passthrough, *ctx.identity_metadata(target.metadata)]
    if target.forward_authorization and ctx.authorization:
        metadata.append(("authorization", ctx.authorization))
    return metadata


def _reason(details: str) -> str:
    lowered = details.lower()
    for needle, reason in _REASONS:
        if needle in lowered:
            return reason
    return "connection failed"


def _channel_options(target: GrpcTarget) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", target.limits.max_message),
        ("grpc.max_receive_message_length", target.limits.max_message),
        ("grpc.keepalive_time_ms", int(target.pool.keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.enable_retries", 0),  # the daemon retries, with budgets
        ("grpc.use_local_subchannel_pool", 1),  # each pooled channel its own connection
        ("grpc.primary_user_agent", "sidecar"),
    ]
    if target.tls is not None and target.tls.server_name:
        options.append(("grpc.ssl_target_name_override", target.tls.server_name))
        options.append(("grpc.default_authority", target.tls.server_name))
    return options


def _credentials(target: GrpcTarget) -> grpc.ChannelCredentials | None:
    tls = target.tls
    if tls is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def frame_pool(target: GrpcTarget,
               on_health: Callable[[bool, str | None], None] | None = None) -> UpstreamPool:
    """The frame engine's pool for `target`, its keys turned into pool options once."""
    from sidecar.engine.endpoints import EndpointPolicy
    from sidecar.engine.pool import PoolOptions, UpstreamPool
    from sidecar.engine.tls import client_context

    tls = target.tls
    pool, outlier = target.pool, target.outlier
    options = PoolOptions(
        keepalive=pool.keepalive,
        keepalive_timeout=pool.keepalive_timeout,
        dns_ttl=pool.dns_ttl,
        policy=EndpointPolicy(
            reconnect_base=pool.reconnect.base, reconnect_max=pool.reconnect.max,
            eject_after=outlier.consecutive_failures, ejection=outlier.ejection,
            max_ejection=outlier.max_ejection),
        ssl=None if tls is None else client_context(tls),
        server_name=None if tls is None else tls.server_name,
    )
    return UpstreamPool(target.name, target.address, pool.connections, options=options,
                        on_health=on_health)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()
