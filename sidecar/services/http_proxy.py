"""sidecar.v1.HttpProxy: one HTTP call through an http target's pooled client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.context import CallContext
from sidecar.errors import SidecarError
from sidecar.resilience.policy import Attempt, TargetPolicy
from sidecar.services.api_call import ApiService, ServicerContext
from sidecar.v1 import sidecar_pb2

if TYPE_CHECKING:  # aiohttp is loaded with the first http target, not by every daemon
    from sidecar.upstreams.http import HttpResult, HttpUpstream

METHOD = "/sidecar.v1.HttpProxy/Call"


class HttpProxyService(ApiService):
    async def Call(self, request: Any, context: ServicerContext) -> Any:
        async def run(
            upstream: HttpUpstream, ctx: CallContext, policy: TargetPolicy, deadline: float
        ) -> Any:
            call = upstream.prepare(
                request.method, request.path, [(h.name, h.value) for h in request.headers],
                request.body, ctx,
            )
            answer: HttpResult | SidecarError | None = None
            ctx.request_bytes = len(call.body)

            async def attempt(time_left: float) -> Attempt:
                nonlocal answer
                call.headers[call.trace_at] = (
                    "traceparent", ctx.begin_attempt(policy, call.method, call.target))
                verdict, answer = await upstream.attempt(call, time_left, deadline)
                if isinstance(answer, SidecarError):
                    ctx.end_attempt(answer)
                else:
                    ctx.end_attempt(None, answer.status)
                return verdict

            await policy.run(deadline, attempt)
            attributes["http.request.method"] = call.method
            if isinstance(answer, SidecarError):
                raise answer
            assert answer is not None
            ctx.response_bytes = len(answer.body)
            attributes["http.response.status_code"] = answer.status
            response = sidecar_pb2.HttpResponse(status=answer.status, body=answer.body)
            add = response.headers.add  # in place: no Header made to be copied in
            for name, value in answer.headers:
                add(name=name, value=value)
            return response

        attributes: dict[str, Any] = {}
        return await self.serve(context, METHOD, request.target, "http", run, attributes)
