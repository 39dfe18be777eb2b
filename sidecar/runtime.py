"""The running world built from one config: upstreams, routers and listener gates.

Reload builds a new Runtime beside the old one and swaps one reference; calls
hold the Runtime they started on, and an old Runtime closes its upstreams once
its last call has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from sidecar.admission import Gate
from sidecar.config import Config
from sidecar.errors import InvalidRequestError, UnknownTargetError, shown
from sidecar.resilience.breaker import OPEN
from sidecar.resilience.policy import TargetPolicy
from sidecar.routing import Router
from sidecar.telemetry.redaction import Redactor
from sidecar.telemetry.semconv import server_of
from sidecar.upstreams import Upstream, build_upstream
from sidecar.upstreams.grpc import GrpcUpstream

if TYPE_CHECKING:
    from sidecar.engine.pool import UpstreamPool

U = TypeVar("U")


class Runtime:
    """Upstreams and per-listener routers for one config, with an in-flight count."""

    def __init__(
        self,
        config: Config,
        on_breaker_change: Callable[[str, str], None] | None = None,
        previous: Runtime | None = None,
    ) -> None:
        self.config = config
        redact = Redactor(config.secrets)
        self.upstreams: dict[str, Upstream] = {
            name: build_upstream(t, redact) for name, t in config.targets.items()
        }
        if previous is not None:
            _keep_spools(self.upstreams, previous.upstreams)
        self.grpc: dict[str, GrpcUpstream] = {
            n: u for n, u in self.upstreams.items() if isinstance(u, GrpcUpstream)
        }
        # A target whose config did not change keeps its breaker, budget and counters.
        kept: dict[str, TargetPolicy] = {} if previous is None else previous.policies
        self.policies: dict[str, TargetPolicy] = {
            name: kept[name] if name in kept and kept[name].target == t
            else TargetPolicy(t, on_breaker_change=on_breaker_change)
            for name, t in config.targets.items()
        }
        for policy in self.policies.values():
            policy.server = server_of(policy.target, redact)
        self.routers = {ls.name: Router(ls, config.targets) for ls in config.listeners}
        # A listener whose rate_limit did not change keeps its buckets.
        gates: dict[str, Gate] = {} if previous is None else previous.gates
        self.gates: dict[str, Gate] = {
            ls.name: Gate(ls, gates.get(ls.name)) for ls in config.listeners}
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing: asyncio.Future[None] | None = None

    async def start(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.start()

    def upstream(self, name: str, kind: str) -> Any:
        """The upstream of target `name`, which must be of `kind` (`http`, `kafka`, ...)."""
        if not name:
            raise InvalidRequestError("target is required")
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise UnknownTargetError(f"unknown target {shown(name)}")
        if upstream.kind != kind:
            raise InvalidRequestError(f"target {name!r} is {upstream.kind}, not {kind}")
        return upstream

    def frame_pool(self, name: str) -> UpstreamPool:
        """The frame engine's connections to grpc target `name` (owned by its upstream)."""
        return self.grpc[name].pool()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def close(self, grace: float, flush: float) -> None:
        """Wait up to `grace` seconds for this runtime's calls, then close its upstreams,
        giving them `flush` seconds to finish what they accepted. A second call joins
        the first close rather than closing twice."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(grace, flush))
        await asyncio.shield(self._closing)

    async def _close(self, grace: float, flush: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        await asyncio.gather(*(u.close(flush) for u in self.upstreams.values()))

    def target_status(self) -> dict[str, dict[str, Any]]:
        """Per target: kind, health, breaker, budget, in-flight, counters."""
        health = self.target_health()
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for name in self.config.targets:
            policy = self.policies[name]
            counters = asdict(policy.counters)
            out[name] = {
                **self.upstreams[name].stats(),
                "healthy": health[name],
                "breaker": {
                    "state": policy.breaker.state,
                    "for_s": round(now - policy.breaker.changed_at, 3),
                    "transitions": policy.breaker.transitions,
                    "rejected": counters["circuit_rejected"],
                },
                "retry_budget": round(policy.budget.balance(now), 3),
                "in_flight": counters.pop("in_flight"),
                "last_error": counters.pop("last_error"),
                "last_error_at": counters.pop("last_error_at"),
                "counters": counters,
            }
        return out

    def spool_stats(self) -> dict[str, dict[str, Any]]:
        """Per kafka target with a spool: its depth, bytes and oldest message's age."""
        out: dict[str, dict[str, Any]] = {}
        for name, upstream in self.upstreams.items():
            spool = getattr(upstream, "spool", None)
            if spool is not None:
                out[name] = spool.stats()
        return out

    def target_health(self) -> dict[str, bool]:
        """Health of every target: not while its breaker is open or it cannot connect,
        unless its spool takes the messages meanwhile (degraded, not down)."""
        return {
            name: upstream.health() and (self.policies[name].breaker.state != OPEN
                                         or _spool_has_room(upstream))
            for name, upstream in self.upstreams.items()
        }


def _spool_has_room(upstream: Upstream) -> bool:
    has_room = getattr(upstream, "spool_has_room", None)
    return has_room is not None and bool(has_room())


def _keep_spools(upstreams: dict[str, Upstream], previous: dict[str, Upstream]) -> None:
    """A kafka target keeping its `spool.dir` across a reload keeps its spool: one
    database, one ledger and one drain, whichever upstream serves the target."""
    for name, upstream in upstreams.items():
        spool = getattr(upstream, "spool", None)
        old = getattr(previous.get(name), "spool", None)
        if spool is not None and old is not None and old.config.dir == spool.config.dir:
            upstream.share_spool(old)  # type: ignore[attr-defined]  # a KafkaUpstream
