"""Method -> target for the transparent proxy: `sidecar-target`, routes, default."""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.config import GrpcTarget, Listener, Target
from sidecar.errors import InvalidRequestError, NoRouteError, UnknownTargetError

_CACHE_LIMIT = 4096  # distinct methods remembered per listener; more are routed uncached


class Router:
    """Routes one listener's calls; the per-method part is computed once and cached."""

    def __init__(self, listener: Listener, targets: Mapping[str, Target]) -> None:
        self.listener = listener
        self._targets = targets
        self._by_method: dict[str, str | None] = {}

    def route(self, method: str, hint: str | None) -> str:
        """The target name for `method` (`/pkg.Service/Method`), or raise why there is none."""
        if hint is not None:
            return self._check_hint(hint)
        try:
            name = self._by_method[method]
        except KeyError:
            name = self._match(method)
            if len(self._by_method) < _CACHE_LIMIT:
                self._by_method[method] = name
        if name is None:
            raise NoRouteError(
                f"no route for method {method} on listener {self.listener.name!r}"
                " (set sidecar-target metadata, a route or default_target)"
            )
        return name

    def _match(self, method: str) -> str | None:
        service = method.lstrip("/").partition("/")[0]
        for route in self.listener.routes:
            if route.pattern.match(service):
                return route.target
        return self.listener.default_target

    def _check_hint(self, name: str) -> str:
        target = self._targets.get(name)
        if target is None:
            raise UnknownTargetError(f"unknown target {name!r} (from sidecar-target metadata)")
        if not isinstance(target, GrpcTarget):
            raise InvalidRequestError(
                f"target {name!r} is {target.kind}; only grpc targets take proxied calls"
            )
        return name
