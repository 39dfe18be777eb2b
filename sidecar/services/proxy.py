"""The transparent proxy engine on grpc.aio: any method not the daemon's own.

The engine only moves bytes and statuses; what to call and with which
metadata comes from `context` (who, ids, trace), `routing` (which target) and
the upstream (how to reach it). A frame-level engine can replace this module
without touching those.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from sidecar.context import build_context, require_identity
from sidecar.errors import SidecarError
from sidecar.runtime import Runtime
from sidecar.telemetry.logging import AccessLog
from sidecar.upstreams.grpc import GrpcUpstream, upstream_metadata

_CACHE_LIMIT = 4096  # method handlers kept per listener


class TransparentProxy(grpc.GenericRpcHandler):
    """Forwards every unknown method of one listener; handlers built once per method."""

    def __init__(
        self, listener: str, runtime: Callable[[], Runtime], access_log: AccessLog
    ) -> None:
        self.listener = listener
        self._runtime = runtime
        self._access = access_log
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            async def forward(requests: AsyncIterator[bytes], context: Any) -> None:
                await self._forward(method, requests, context)

            handler = grpc.stream_stream_rpc_method_handler(forward)
            if len(self._handlers) < _CACHE_LIMIT:
                self._handlers[method] = handler
        return handler

    async def _forward(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        started = time.monotonic()
        runtime = self._runtime()
        runtime.enter()
        router = runtime.routers[self.listener]
        ctx = build_context(context.invocation_metadata() or (), router.listener.identity)
        target: str | None = None
        status = grpc.StatusCode.OK
        try:
            require_identity(ctx, router.listener.identity, self.listener)
            target = router.route(method, ctx.target_hint)
            upstream = runtime.grpc[target]
            timeout = context.time_remaining()
            if timeout is None:
                timeout = upstream.target.timeout
            metadata = upstream_metadata(ctx, upstream.target)
            status = await _relay(upstream, method, metadata, timeout, requests, context,
                                  ("correlation-id", ctx.correlation_id))
        except SidecarError as e:
            status = e.grpc_status
            await _fail(context, e, ctx.correlation_id)
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED
            raise
        finally:
            runtime.leave()
            if self._access.enabled:
                self._access.call(
                    listener=self.listener, method=method, target=target, status=status.name,
                    started=started, correlation_id=ctx.correlation_id,
                    request_id=ctx.request_id,
                )


async def _relay(
    upstream: GrpcUpstream,
    method: str,
    metadata: list[tuple[str, str | bytes]],
    timeout: float,  # noqa: ASYNC109 -- the upstream call's deadline, not a wait of ours
    requests: AsyncIterator[bytes],
    context: grpc.aio.ServicerContext,
    correlation: tuple[str, str],
) -> grpc.StatusCode:
    """Run one upstream call, relaying messages both ways; return its final status."""
    deadline = time.monotonic() + timeout
    call = upstream.open(method, metadata, timeout)
    pump = asyncio.ensure_future(_pump(requests, call))
    got_headers = False
    try:
        headers = await call.initial_metadata()
        got_headers = len(headers) > 0
        await context.send_initial_metadata(
            (*(kv for kv in headers if kv[0] != correlation[0]), correlation)
        )
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                await context.write(message)
        except grpc.aio.AioRpcError:
            pass  # the call's status, read below, says what happened
        code = await call.code()
        details = await call.details()
        error = upstream.translate(code, details, got_headers, time.monotonic() >= deadline)
        if error is not None:
            raise error
        context.set_code(code)
        if details:
            context.set_details(details)
        trailers = await call.trailing_metadata()
        if trailers:
            context.set_trailing_metadata(tuple(trailers))
        return code
    finally:
        if not pump.done():
            pump.cancel()
        if not call.done():
            call.cancel()


async def _pump(requests: AsyncIterator[bytes], call: grpc.aio.StreamStreamCall) -> None:
    """Copy the caller's messages upstream; a failed write is left for the call's status.

    grpc.aio's `write` marks the call INTERNAL when a write fails because the
    upstream already ended the call (UNIMPLEMENTED at header time, an early
    error), and the upstream's real status can be lost. Sending through the
    call's core object leaves the status to the upstream.
    """
    try:
        await call.wait_for_connection()
    except grpc.aio.AioRpcError:
        return  # ended before the request went out; its status says why
    send = call._cython_call.send_serialized_message
    with contextlib.suppress(Exception):  # the call ended early: its status says why
        async for message in requests:
            await send(message)
        await call.done_writing()


async def _fail(context: grpc.aio.ServicerContext, error: SidecarError, correlation: str) -> None:
    """End the caller's call with the daemon's own error."""
    with contextlib.suppress(grpc.aio.UsageError, RuntimeError):
        await context.send_initial_metadata((("correlation-id", correlation),))
    context.set_code(error.grpc_status)
    context.set_details(str(error))
