"""grpc.health.v1 for every listener: "" is the daemon, NAME is target NAME."""

from __future__ import annotations

from collections.abc import Callable

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """One health servicer shared by all listeners, refreshed from the targets' state."""

    def __init__(self, target_health: Callable[[], dict[str, bool]]) -> None:
        self.servicer = health.aio.HealthServicer()
        self._target_health = target_health
        self._known: dict[str, bool] = {}

    async def refresh(self) -> None:
        """Publish each target's current health; forget targets a reload removed."""
        current = self._target_health()
        for name, healthy in current.items():
            if self._known.get(name) != healthy:
                await self.servicer.set(name, SERVING if healthy else NOT_SERVING)
        for name in self._known.keys() - current.keys():
            await self.servicer.set(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        self._known = current

    async def shutting_down(self) -> None:
        await self.servicer.enter_graceful_shutdown()
