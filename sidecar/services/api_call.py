"""The sidecar.v1 services' side of a call: their context, their errors, their answer.

What every kind of call shares (identity, admission, the target, its policy, the access
log) is `CallScope` (call.py), the same one the transparent proxy uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from sidecar.context import CallContext
from sidecar.engine.peer import Peer
from sidecar.errors import SidecarError
from sidecar.resilience.policy import TargetPolicy
from sidecar.runtime import Runtime
from sidecar.services.call import CallScope
from sidecar.status import StatusCode
from sidecar.telemetry.hub import Telemetry

T = TypeVar("T")
CORRELATION_KEY = "correlation-id"
DEADLINE_CANCEL = "deadline"  # why services/native.py cancels a call: its deadline passed


class ServicerContext(Protocol):
    """What the servicers ask of their call's context (services/native.py's NativeContext)."""

    @property
    def peer(self) -> Peer | None: ...  # the caller connection's SO_PEERCRED

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None: ...

    def time_remaining(self) -> float | None: ...

    async def send_initial_metadata(self, metadata: Any) -> None: ...

    async def abort(self, code: StatusCode, details: str) -> None: ...


class ApiService:
    """Base of the daemon's own servicers on one listener."""

    def __init__(
        self, listener: str, runtime: Callable[[], Runtime], telemetry: Telemetry
    ) -> None:
        self.listener = listener
        self._runtime = runtime
        self.telemetry = telemetry

    async def serve(
        self,
        context: ServicerContext,
        method: str,
        target: str,
        kind: str,
        run: Callable[[Any, CallContext, TargetPolicy, float], Awaitable[T]],
        attributes: dict[str, Any] | None = None,
    ) -> T:
        """Run `run(upstream, ctx, policy, deadline)` for target `target` under its policy;
        `run` may add metric attributes (an HTTP status, ...) to `attributes`."""
        scope = CallScope(self.telemetry, self._runtime(), self.listener, method,
                          context.invocation_metadata() or (), context.peer)
        ctx = scope.ctx
        status = StatusCode.OK
        try:
            scope.admit()
            upstream, policy = scope.open(target, kind, "from the request")
            deadline = scope.deadline(context.time_remaining())
            try:
                result = await run(upstream, ctx, policy, deadline)
            except SidecarError as e:
                scope.failed(e)
                raise
            await context.send_initial_metadata(((CORRELATION_KEY, ctx.correlation_id),))
            return result
        except SidecarError as e:
            status = e.grpc_status
            ctx.add_flag(e.flag)  # a refusal before `run` (admission, the target) too
            await send_error(context, e, ctx.correlation_id)
            raise AssertionError("abort returns never") from e
        except asyncio.CancelledError as e:  # logged as the caller saw it
            deadline_passed = bool(e.args) and e.args[0] == DEADLINE_CANCEL
            status = StatusCode.DEADLINE_EXCEEDED if deadline_passed else StatusCode.CANCELLED
            raise
        except Exception:  # a fault of ours: the caller is answered INTERNAL (native.py)
            status = StatusCode.INTERNAL
            raise
        finally:
            scope.end(status, attributes)


async def send_error(context: Any, error: SidecarError, correlation: str) -> None:
    """End the caller's call with the daemon's own error (the message names the target)."""
    with contextlib.suppress(RuntimeError):
        await context.send_initial_metadata(((CORRELATION_KEY, correlation),))
    if error.trailers:
        context.set_trailing_metadata(error.trailers)
    await context.abort(error.grpc_status, str(error))
