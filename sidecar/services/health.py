"""grpc.health.v1 for every listener: "" is the daemon, NAME is target NAME.

Served on the engine: `Check` is a native unary method, `Watch` a native stream that
sends the current status at once and each change after it (the health protocol,
grpc/doc/health-checking.md). One `HealthState` is shared by every listener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpc_health.v1 import health_pb2

from sidecar.errors import shown
from sidecar.services.native_stream import NativeStream, Session, StreamMethod
from sidecar.status import StatusCode

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SHUTTING_DOWN = "the daemon is shutting down"


class HealthState:
    """The serving status of each service name, and the streams watching them."""

    def __init__(self, refresh: Callable[[], None] | None = None) -> None:
        self._status: dict[str, int] = {"": SERVING}
        self._watchers: dict[str, set[Watch]] = {}
        self._refresh = refresh  # brings the statuses up to date (Check reads them live)
        self.shutting_down = False

    def refresh(self) -> None:
        """Bring the statuses up to date now (between the daemon's periodic refreshes)."""
        if self._refresh is not None:
            self._refresh()

    def get(self, service: str) -> int | None:
        return self._status.get(service)

    def set(self, service: str, status: int) -> None:
        """Set a status (ignored once shutting down: everything is NOT_SERVING then)."""
        if self.shutting_down or self._status.get(service) == status:
            return
        self._status[service] = status
        self._notify(service)

    def forget(self, service: str) -> None:
        if not self.shutting_down and self._status.pop(service, None) is not None:
            self._notify(service)

    def shut_down(self) -> None:
        """Every service NOT_SERVING for good; watchers are told, then their calls end."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for service in self._status:
            self._status[service] = NOT_SERVING
        for service in list(self._watchers):
            self._notify(service)

    def watch(self, service: str, watcher: Watch) -> None:
        self._watchers.setdefault(service, set()).add(watcher)

    def unwatch(self, service: str, watcher: Watch) -> None:
        watchers = self._watchers.get(service)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[service]

    def _notify(self, service: str) -> None:
        for watcher in list(self._watchers.get(service, ())):
            watcher.changed()

    # -- the methods ----------------------------------------------------------------------

    async def Check(self, request: Any, context: Any) -> Any:  # gRPC names the method
        self.refresh()  # what /readyz says now, not at the last periodic refresh
        status = self._status.get(request.service)
        if status is None:
            await context.abort(StatusCode.NOT_FOUND, f"unknown service {shown(request.service)}")
        return health_pb2.HealthCheckResponse(status=status)

    def watch_method(self) -> StreamMethod:
        """Health/Watch as a streaming method of the engine."""
        return StreamMethod(health_pb2.HealthCheckRequest.FromString,
                            lambda call: Watch(self, call))


class Watch(Session):
    """One Health/Watch call: the status now, then every change, until the caller leaves."""

    __slots__ = ("_call", "_last", "_service", "_state")

    def __init__(self, state: HealthState, call: NativeStream) -> None:
        self._state = state
        self._call = call
        self._service: str | None = None
        self._last: int | None = None

    def on_message(self, message: Any) -> None:
        if self._service is not None:
            self._call.finish(StatusCode.INTERNAL,
                              f"{self._call.name}: takes exactly one request message")
            return
        self._service = str(message.service)
        self._state.refresh()
        self._state.watch(self._service, self)
        self.changed()

    def on_end(self) -> None:
        if self._service is None:
            self._call.finish(StatusCode.INTERNAL,
                              f"{self._call.name}: no request message was sent")

    def on_close(self) -> None:
        if self._service is not None:
            self._state.unwatch(self._service, self)

    def changed(self) -> None:
        state = self._state
        assert self._service is not None
        status = state.get(self._service)
        if status is None:
            status = SERVICE_UNKNOWN
        if status != self._last:
            self._last = status
            self._call.send(health_pb2.HealthCheckResponse(status=status))
        if state.shutting_down:
            self._call.finish(StatusCode.UNAVAILABLE, SHUTTING_DOWN)


class HealthReporter:
    """The daemon's health state, refreshed from the targets' state."""

    def __init__(self, target_health: Callable[[], dict[str, bool]]) -> None:
        self.state = HealthState(self.refresh)
        self._target_health = target_health
        self._known: dict[str, bool] = {}

    def refresh(self) -> None:
        """Publish each target's current health; forget targets a reload removed."""
        current = self._target_health()
        for name, healthy in current.items():
            if self._known.get(name) != healthy:
                self.state.set(name, SERVING if healthy else NOT_SERVING)
        for name in self._known.keys() - current.keys():
            self.state.forget(name)
        self._known = current

    def shutting_down(self) -> None:
        self.state.shut_down()
