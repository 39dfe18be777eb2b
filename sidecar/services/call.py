"""One call of any kind, from its context to its access-log line.

The transparent proxy (frame_proxy.py, driven by frame events) and the sidecar.v1
services (api_call.py, a coroutine per call) both go through a `CallScope`, so they
make the same checks in the same order and log the same way:

1. the call's context from the caller's metadata and its connection's peer
   (`build_context`), counted in flight and announced to telemetry;
2. `admit()`: the listener's gate (peer, required user id, rate limit);
3. `open(target, kind)`: a target the listener may reach (its `targets` allow-list),
   known and of the kind the method needs, and an in-flight slot of its policy;
4. `failed(error)` for the daemon's own answer, which the policy remembers for /status
   (and its Envoy-style response flag, errors.py);
5. `end(status)`: exactly once, whatever happened, with the status the caller got.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sidecar.context import CallContext, build_context
from sidecar.errors import SidecarError
from sidecar.status import StatusCode

if TYPE_CHECKING:
    from sidecar.engine.peer import Peer
    from sidecar.resilience.policy import TargetPolicy
    from sidecar.runtime import Runtime
    from sidecar.telemetry.hub import Telemetry


class CallScope:
    """What one call holds of the daemon between its start and its end."""

    __slots__ = ("_admitted", "_ended", "_telemetry", "ctx", "kind", "listener", "method",
                 "policy", "runtime", "started", "target")

    def __init__(self, telemetry: Telemetry, runtime: Runtime, listener: str, method: str,
                 metadata: Iterable[tuple[str, str | bytes]], peer: Peer | None,
                 started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.runtime = runtime
        self.listener = listener
        self.method = method
        self.target: str | None = None
        self.kind: str | None = None
        self.policy: TargetPolicy | None = None
        self._telemetry = telemetry
        self._admitted = False
        self._ended = False
        self.ctx: CallContext = build_context(
            metadata, runtime.routers[listener].listener.identity, peer)
        runtime.enter()
        telemetry.begin(listener, method, self.ctx)

    def admit(self) -> None:
        """The listener's gate: raises PermissionDenied, Unauthenticated or RateLimited."""
        self.runtime.gates[self.listener].admit(self.ctx)

    def route(self) -> str:
        """The target of a proxied call: `sidecar-target`, a route or `default_target`,
        within the listener's allow-list (the router checks it)."""
        return self.runtime.routers[self.listener].route(self.method, self.ctx.target_hint)

    def open(self, target: str, kind: str,
             named_by: str | None = None) -> tuple[Any, TargetPolicy]:
        """The upstream of `target` and its policy, an in-flight slot of it taken.
        `named_by`: where a caller-chosen name came from (it is checked against the
        listener's allow-list here; a routed one was checked by `route`)."""
        runtime = self.runtime
        known = runtime.config.targets.get(target)
        self.target = target or None
        self.kind = None if known is None else known.kind
        if named_by is not None and target:
            runtime.routers[self.listener].check_target(target, named_by)
        upstream = runtime.upstream(target, kind)
        policy = self.policy = runtime.policies[target]
        policy.admit()
        self._admitted = True
        return upstream, policy

    def deadline(self, time_left: float | None) -> float:
        """When the call ends: the caller's deadline, else the target's `timeout`."""
        assert self.policy is not None
        return self.started + (self.policy.target.timeout if time_left is None else time_left)

    def failed(self, error: SidecarError) -> None:
        """The call ends with the daemon's own error: the target's policy keeps it, and
        the access line its response flag."""
        self.ctx.add_flag(error.flag)
        if self._admitted and self.policy is not None:
            self.policy.note_error(error)

    def end(self, status: StatusCode, attributes: Mapping[str, Any] | None = None) -> None:
        """The call is over with `status`, the one its caller got: the slot is given back
        and the access-log line written. Only the first call counts."""
        if self._ended:
            return
        self._ended = True
        ctx = self.ctx
        if status is not StatusCode.OK:
            if status is StatusCode.CANCELLED:
                ctx.add_flag("DC")  # the caller went away
            elif ctx.attempts > 1:
                ctx.add_flag("URX")  # retried, and the last attempt failed all the same
        if self._admitted:
            self._admitted = False
            assert self.policy is not None
            self.policy.release()
        self.runtime.leave()
        self._telemetry.end(self.listener, self.method, self.target, self.kind, status,
                            self.started, self.ctx, attributes)
