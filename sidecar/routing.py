"""Method -> target for the transparent proxy (`sidecar-target`, routes, default), and
which targets a listener may reach at all (`listeners[].targets`), for every kind of call."""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.config import GrpcTarget, Listener, Target
from sidecar.config_values import glob_pattern
from sidecar.errors import (
    InvalidRequestError,
    NoRouteError,
    PermissionDeniedError,
    UnknownTargetError,
    shown,
)

_CACHE_LIMIT = 4096  # distinct methods remembered per listener; more are routed uncached


class Router:
    """Routes one listener's calls; the per-method part is computed once and cached."""

    def __init__(self, listener: Listener, targets: Mapping[str, Target]) -> None:
        self.listener = listener
        self._targets = targets
        self._by_method: dict[str, str | None] = {}
        globs = listener.targets
        self._patterns = None if globs is None else tuple(glob_pattern(g) for g in globs)
        # The configured targets the allow-list lets through, found once.
        self._allowed: frozenset[str] | None = None if globs is None else frozenset(
            name for name in targets if self._listed(name))

    def check_target(self, name: str, how: str) -> None:
        """Refuse a target outside the listener's allow-list, named however (`how`): the
        call never reaches it. A name the list would allow but no target has is left to
        the caller's lookup (NOT_FOUND)."""
        allowed = self._allowed
        if allowed is not None and name not in allowed and not (
                name not in self._targets and self._listed(name)):
            raise PermissionDeniedError(
                f"target {shown(name)} ({how}) is not allowed on listener "
                f"{self.listener.name!r} (listeners[].targets)")

    def _listed(self, name: str) -> bool:
        return self._patterns is None or any(p.match(name) for p in self._patterns)

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
        if self._allowed is not None:  # config refuses such routes; this is the guarantee
            self.check_target(name, "by route or default_target")
        return name

    def _match(self, method: str) -> str | None:
        service = method.lstrip("/").partition("/")[0]
        for route in self.listener.routes:
            if route.pattern.match(service):
                return route.target
        return self.listener.default_target

    def _check_hint(self, name: str) -> str:
        self.check_target(name, "from sidecar-target metadata")
        target = self._targets.get(name)
        if target is None:
            raise UnknownTargetError(
                f"unknown target {shown(name)} (from sidecar-target metadata)")
        if not isinstance(target, GrpcTarget):
            raise InvalidRequestError(
                f"target {name!r} is {target.kind}; only grpc targets take proxied calls"
            )
        return name
