"""The running world built from one config: upstreams and routers.

Reload builds a new Runtime beside the old one and swaps one reference; calls
hold the Runtime they started on, and an old Runtime closes its upstreams once
its last call has finished.
"""

from __future__ import annotations

import asyncio
import contextlib

from sidecar.config import Config, GrpcTarget
from sidecar.routing import Router
from sidecar.upstreams.grpc import GrpcUpstream


class Runtime:
    """Upstreams and per-listener routers for one config, with an in-flight count."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.grpc: dict[str, GrpcUpstream] = {
            name: GrpcUpstream(t) for name, t in config.targets.items() if isinstance(t, GrpcTarget)
        }
        self.routers = {ls.name: Router(ls, config.targets) for ls in config.listeners}
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        for upstream in self.grpc.values():
            await upstream.start()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for this runtime's calls, then close its upstreams."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for upstream in self.grpc.values():
            await upstream.close()

    def target_health(self) -> dict[str, bool]:
        """Health of every target by name (kinds without a check yet count as healthy)."""
        health = dict.fromkeys(self.config.targets, True)
        for name, upstream in self.grpc.items():
            health[name] = upstream.health()
        return health
