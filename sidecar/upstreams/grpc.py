"""Upstream gRPC targets: the frame engine's pool per target.

A target's `UpstreamPool` (sidecar/engine/pool.py) is created by `start()`, closed by
`close()`, and is what `health()`, `stats()` and the "target unreachable" warning read.
The proxy (services/frame_proxy.py) opens streams on it; failures are known from our
engine's own events, never from a library's messages. This module classifies an
attempt's outcome for the resilience layer and builds the metadata the contract injects.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sidecar.config import GrpcTarget
from sidecar.context import CallContext, caller_metadata
from sidecar.errors import LimitExceededError, SidecarError
from sidecar.resilience.policy import Attempt
from sidecar.status import StatusCode
from sidecar.telemetry.redaction import NO_SECRETS, Redactor

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.engine.pool import UpstreamPool

log = logging.getLogger("sidecar.grpc")


class GrpcUpstream:
    """One gRPC target: its frame pool, health and status."""

    kind = "grpc"

    def __init__(self, target: GrpcTarget, redact: Redactor = NO_SECRETS) -> None:
        self.target = target
        self.frames: UpstreamPool | None = None  # the frame engine's pool, from start()
        self.retry_on = frozenset(
            StatusCode[c] for c in target.retry.on if isinstance(c, str)
        )
        self._redact = redact

    async def start(self) -> None:
        """Create the pool and start connecting: its connects decide reachability."""
        self.pool().warm()

    def pool(self) -> UpstreamPool:
        """The target's pool, created on first use."""
        pool = self.frames
        if pool is None:
            pool = self.frames = frame_pool(self.target, self._frames_health)
        return pool

    async def close(self, timeout: float) -> None:
        if self.frames is not None:
            await self.frames.close()

    def health(self) -> bool:
        """False while no endpoint can be connected. Asking also connects an idle pool,
        so health is known (and a connection warm) before the first call."""
        pool = self.pool()
        pool.warm()
        return pool.healthy()

    def stats(self) -> dict[str, Any]:
        frames = self.pool().stats()
        for endpoint in frames["endpoints"]:
            endpoint["address"] = self._redact(endpoint["address"])
        return {"kind": self.kind, "address": self._redact(self.target.address),
                "connections": frames["connections"], "frames": frames}

    def _frames_health(self, healthy: bool, reason: str | None) -> None:
        """The pool's reachability changed: one line each way."""
        name = self.target.name
        if healthy:
            log.info("target reachable", extra={"fields": {"target": name}})
        else:
            log.warning("target unreachable", extra={"fields": {
                "target": name, "reason": reason or "connection failed"}})


# Upstream faults: count against the breaker (DESIGN.md, "Breaker").
_FAULTS = frozenset({
    StatusCode.UNAVAILABLE, StatusCode.INTERNAL, StatusCode.UNKNOWN,
    StatusCode.DEADLINE_EXCEEDED,
})
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def classify(
    code: StatusCode, error: SidecarError | None, retry_on: frozenset[StatusCode]
) -> Attempt:
    """What an attempt's final status means to the resilience layer."""
    if code is StatusCode.OK:
        return Attempt(ok=True)
    if isinstance(error, LimitExceededError):
        return Attempt(ok=False)  # our own size limit: the caller's message, not a fault
    fault = code in _FAULTS
    retryable = code is StatusCode.UNAVAILABLE or code in retry_on
    return Attempt(ok=False, fault=fault, retryable=retryable)


def upstream_metadata(ctx: CallContext, target: GrpcTarget) -> list[tuple[str, str | bytes]]:
    """The caller's metadata (without what poses as the target's injected names) plus the
    identity, ids and trace the contract injects."""
    names = target.metadata
    metadata = caller_metadata(ctx.passthrough, names.reserved)
    metadata += ctx.identity_metadata(names)
    if target.forward_authorization and ctx.authorization:
        metadata.append(("authorization", ctx.authorization))
    return metadata


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
