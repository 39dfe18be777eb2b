"""The transparent proxy engine on grpc.aio: any method not the daemon's own.

The engine only moves bytes and statuses; what to call and with which
metadata comes from `context` (who, ids, trace), `routing` (which target),
`resilience` (whether to try again) and the upstream (how to reach it). A
frame-level engine can replace this module without touching those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from sidecar.context import CallContext, build_context, require_identity
from sidecar.errors import SidecarError
from sidecar.resilience.backoff import grpc_pushback
from sidecar.resilience.policy import Attempt
from sidecar.runtime import Runtime
from sidecar.services.api_call import send_error
from sidecar.services.replay import RequestReplay
from sidecar.telemetry.hub import Telemetry
from sidecar.upstreams.grpc import PUSHBACK_KEY, GrpcUpstream, classify, upstream_metadata

_CACHE_LIMIT = 4096  # method handlers kept per listener
Metadata = tuple[tuple[str, str | bytes], ...]


class TransparentProxy(grpc.GenericRpcHandler):
    """Forwards every unknown method of one listener; handlers built once per method."""

    def __init__(
        self, listener: str, runtime: Callable[[], Runtime], telemetry: Telemetry
    ) -> None:
        self.listener = listener
        self._runtime = runtime
        self._telemetry = telemetry
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
        listener = self.listener
        router = runtime.routers[listener]
        ctx = build_context(context.invocation_metadata() or (), router.listener.identity)
        self._telemetry.begin(listener, method, ctx)
        target: str | None = None
        status = grpc.StatusCode.OK
        try:
            require_identity(ctx, router.listener.identity, listener)
            target = router.route(method, ctx.target_hint)
            upstream = runtime.grpc[target]
            policy = runtime.policies[target]
            remaining = context.time_remaining()
            deadline = started + (upstream.target.timeout if remaining is None else remaining)
            call = _ProxiedCall(upstream, method, ctx, requests, context)
            policy.admit()
            try:
                await policy.run(deadline, call.attempt)
                status = await call.deliver()
            except SidecarError as e:
                policy.note_error(str(e))
                raise
            finally:
                policy.release()
                call.close()
        except SidecarError as e:
            status = e.grpc_status
            await send_error(context, e, ctx.correlation_id)
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED
            raise
        finally:
            runtime.leave()
            self._telemetry.end(listener, method, target, "grpc" if target else None, status,
                                started, ctx)


class _ProxiedCall:
    """One caller's call across its attempts: holds back the answer until it is final."""

    def __init__(
        self,
        upstream: GrpcUpstream,
        method: str,
        ctx: CallContext,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> None:
        self._upstream = upstream
        self._method = method
        self._ctx = ctx
        self._metadata = upstream_metadata(ctx, upstream.target)
        self._trace_at = self._metadata.index(("traceparent", ctx.traceparent))
        self._requests = RequestReplay(requests, upstream.target.limits.max_message)
        self._context = context
        self._correlation = ("correlation-id", ctx.correlation_id)
        self._headers: Metadata = ()
        self._committed = False
        self._code = grpc.StatusCode.UNKNOWN
        self._details: str | None = None
        self._trailers: Metadata = ()
        self._error: SidecarError | None = None

    async def attempt(self, time_left: float) -> Attempt:
        """Run one upstream try; stream to the caller once its first message arrives."""
        deadline = time.monotonic() + time_left
        self._metadata[self._trace_at] = (
            "traceparent", self._ctx.begin_attempt(self._upstream.target.name))
        call = self._upstream.open(self._method, self._metadata, time_left)
        self._requests.attach(call)
        try:
            self._headers = tuple(await call.initial_metadata())
            message = await _read(call)
            if message is not grpc.aio.EOF:
                await self._commit(message)
                while (message := await _read(call)) is not grpc.aio.EOF:
                    await self._context.write(message)
            self._code = await call.code()
            self._details = await call.details()
            self._trailers = tuple(await call.trailing_metadata() or ())
        finally:
            if not call.done():
                call.cancel()
            self._ctx.end_attempt(None if self._code is grpc.StatusCode.OK else self._code.name)
        self._error = self._upstream.translate(
            self._code, self._details, bool(self._headers), time.monotonic() >= deadline
        )
        verdict = classify(self._code, self._error, self._upstream.retry_on)
        verdict.committed = self._committed
        verdict.retryable = verdict.retryable and self._requests.replayable
        if verdict.retryable:  # pushback only matters to a retry
            pushback = dict(self._trailers).get(PUSHBACK_KEY)
            verdict.pushback = grpc_pushback(pushback if isinstance(pushback, str) else None)
        return verdict

    async def deliver(self) -> grpc.StatusCode:
        """Give the caller the final attempt's status (its messages went out already)."""
        if self._error is not None:
            raise self._error
        if not self._committed:
            await self._send_headers()
        context = self._context
        context.set_code(self._code)
        if self._details:
            context.set_details(self._details)
        if self._trailers:
            context.set_trailing_metadata(self._trailers)
        return self._code

    def close(self) -> None:
        self._requests.close()

    async def _commit(self, first: bytes) -> None:
        self._committed = True
        self._requests.commit()
        await self._send_headers()
        await self._context.write(first)

    async def _send_headers(self) -> None:
        name = self._correlation[0]
        await self._context.send_initial_metadata(
            (*(kv for kv in self._headers if kv[0] != name), self._correlation)
        )


async def _read(call: grpc.aio.StreamStreamCall) -> Any:
    """The next response message, or EOF once the call has ended (however it ended)."""
    try:
        return await call.read()
    except grpc.aio.AioRpcError:
        return grpc.aio.EOF
