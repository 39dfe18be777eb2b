"""What every sidecar.v1 call shares: identity, target lookup, policy, errors, access log."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sidecar.context import CallContext, build_context, require_identity
from sidecar.errors import SidecarError
from sidecar.resilience.policy import TargetPolicy
from sidecar.runtime import Runtime
from sidecar.telemetry.logging import AccessLog

U = TypeVar("U")
T = TypeVar("T")
CORRELATION_KEY = "correlation-id"


class ApiService:
    """Base of the daemon's own servicers on one listener."""

    def __init__(
        self, listener: str, runtime: Callable[[], Runtime], access_log: AccessLog
    ) -> None:
        self.listener = listener
        self._runtime = runtime
        self._access = access_log

    async def serve(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        target: str,
        kind: type[U],
        run: Callable[[U, CallContext, TargetPolicy, float], Awaitable[T]],
    ) -> T:
        """Run `run(upstream, ctx, policy, deadline)` for target `target` under its policy."""
        started = time.monotonic()
        runtime = self._runtime()
        runtime.enter()
        identity = runtime.routers[self.listener].listener.identity
        ctx = build_context(context.invocation_metadata() or (), identity)
        status = grpc.StatusCode.OK
        try:
            require_identity(ctx, identity, self.listener)
            upstream = runtime.upstream(target, kind)
            policy = runtime.policies[target]
            remaining = context.time_remaining()
            deadline = started + (policy.target.timeout if remaining is None else remaining)
            policy.admit()
            try:
                result = await run(upstream, ctx, policy, deadline)
            except SidecarError as e:
                policy.note_error(str(e))
                raise
            finally:
                policy.release()
            await context.send_initial_metadata(((CORRELATION_KEY, ctx.correlation_id),))
            return result
        except SidecarError as e:
            status = e.grpc_status
            await send_error(context, e, ctx.correlation_id)
            raise AssertionError("abort returns never") from e
        finally:
            runtime.leave()
            if self._access.enabled:
                self._access.call(
                    listener=self.listener, method=method, target=target or None,
                    status=status.name, started=started, correlation_id=ctx.correlation_id,
                    request_id=ctx.request_id,
                )


async def send_error(context: Any, error: SidecarError, correlation: str) -> None:
    """End the caller's call with the daemon's own error (the message names the target)."""
    with contextlib.suppress(grpc.aio.UsageError, RuntimeError):
        await context.send_initial_metadata(((CORRELATION_KEY, correlation),))
    await context.abort(error.grpc_status, str(error))
