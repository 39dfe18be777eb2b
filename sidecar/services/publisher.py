"""sidecar.v1.Publisher: Kafka publishing through a kafka target.

Requests are checked against the target (topic allow-list, message size)
before anything is sent, every message gets the call's identity headers, and
the call answers once the brokers acknowledged (or just before the deadline).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.config import KafkaTarget
from sidecar.context import CallContext
from sidecar.errors import InvalidRequestError, LimitExceededError, SidecarError, UpstreamError
from sidecar.resilience.policy import Attempt, TargetPolicy
from sidecar.services.api_call import ApiService
from sidecar.telemetry.hub import Telemetry
from sidecar.upstreams.kafka_messages import Delivered, Outcome, OutgoingMessage, classify

if TYPE_CHECKING:  # confluent-kafka is loaded with the first kafka target
    from sidecar.upstreams.kafka import KafkaUpstream

PUBLISH = "/sidecar.v1.Publisher/Publish"
PUBLISH_BATCH = "/sidecar.v1.Publisher/PublishBatch"
Headers = list[tuple[str, str | bytes | None]]


class PublisherService(ApiService, sidecar_pb2_grpc.PublisherServicer):
    """Publish and PublishBatch on one listener, on ApiService's shared call path."""

    async def Publish(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        attributes = _attributes(request.topic, "publish")
        return await self.serve(
            context, PUBLISH, request.target, "kafka",
            partial(_publish, request, self.telemetry), attributes,
        )

    async def PublishBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        attributes = _attributes(request.topic, "publish_batch")
        return await self.serve(
            context, PUBLISH_BATCH, request.target, "kafka",
            partial(_publish_batch, request, self.telemetry), attributes,
        )


def _attributes(topic: str, operation: str) -> dict[str, Any]:
    return {"messaging.system": "kafka", "messaging.operation.name": operation,
            "messaging.destination.name": topic}


async def _publish(
    request: Any, telemetry: Telemetry, upstream: KafkaUpstream, ctx: CallContext,
    policy: TargetPolicy, deadline: float,
) -> Any:
    """One message: the brokers' partition and offset, or the call fails."""
    upstream.check_topic(request.topic)
    message = _outgoing(upstream.target, request, _identity(ctx, upstream.target))
    if isinstance(message, SidecarError):
        ctx.end_attempt(str(message))
        raise message
    outcome = (await _send(upstream, telemetry, ctx, policy, deadline, request.topic,
                           [message]))[0]
    if isinstance(outcome, SidecarError):
        raise outcome
    return sidecar_pb2.PublishResponse(
        topic=request.topic, partition=outcome.partition, offset=outcome.offset
    )


async def _publish_batch(
    request: Any, telemetry: Telemetry, upstream: KafkaUpstream, ctx: CallContext,
    policy: TargetPolicy, deadline: float,
) -> Any:
    """Many messages, pipelined: one result per message, in order; the call itself fails
    only when the brokers took none of them (then the results would carry no news)."""
    upstream.check_topic(request.topic)
    identity = _identity(ctx, upstream.target)
    messages = [_outgoing(upstream.target, m, identity) for m in request.messages]
    outcomes = await _send(upstream, telemetry, ctx, policy, deadline, request.topic, messages)
    if not any(isinstance(o, Delivered) for o in outcomes):
        fault = next((o for o in outcomes if isinstance(o, UpstreamError)), None)
        if fault is not None:
            raise fault
    return sidecar_pb2.PublishBatchResponse(results=[_result(o) for o in outcomes])


async def _send(
    upstream: KafkaUpstream, telemetry: Telemetry, ctx: CallContext, policy: TargetPolicy,
    deadline: float, topic: str, messages: Sequence[OutgoingMessage | SidecarError],
) -> list[Outcome]:
    """One attempt under the target's policy (breaker, deadline); never a second send.
    The attempt's span, when tracing, was begun by `_identity` (its id is in the headers)."""
    outcomes: list[Outcome] = []

    async def attempt(time_left: float) -> Attempt:
        outcomes[:] = await upstream.publish(topic, messages, len(messages), time_left)
        return classify(outcomes)

    try:
        await policy.run(deadline, attempt)
    finally:
        failed = next((o for o in outcomes if isinstance(o, UpstreamError)), None)
        ctx.end_attempt(None if failed is None else str(failed))
    delivered = [m for m, o in zip(messages, outcomes, strict=False)
                 if isinstance(o, Delivered) and isinstance(m, OutgoingMessage)]
    if delivered:
        telemetry.messages_sent(upstream.target.name, topic, len(delivered),
                                sum(len(m.value) for m in delivered))
    return outcomes


def _identity(ctx: CallContext, target: KafkaTarget) -> tuple[Headers, frozenset[str]]:
    """The headers injected into every message (with this attempt's traceparent), and
    the names a caller may not set."""
    names = target.metadata
    traceparent = ctx.begin_attempt(target.name)
    headers: Headers = [("traceparent", traceparent) if k == "traceparent" else (k, v)
                        for k, v in ctx.identity_metadata(names)]
    reserved = frozenset(n.lower() for n in (
        names.user_id, names.correlation_id, names.request_id, "traceparent", "tracestate"))
    return headers, reserved


def _outgoing(
    target: KafkaTarget, m: Any, identity: tuple[Headers, frozenset[str]]
) -> OutgoingMessage | SidecarError:
    """A PublishRequest's or BatchMessage's message as sent, or why it is refused.

    The caller's headers are kept except those named like an injected one (so
    a caller cannot pose as another user); the size counted against
    `max_message_bytes` is key, value and the caller's headers.
    """
    injected, reserved = identity
    explicit = m.HasField("partition")
    if explicit and m.partition < 0:
        return InvalidRequestError(f"target {target.name!r}: partition {m.partition} is negative")
    headers: Headers = [(h.name, h.value) for h in m.headers if h.name.lower() not in reserved]
    size = len(m.key) + len(m.value) + sum(len(h.name) + len(h.value.encode())
                                           for h in m.headers)
    if size > target.max_message_bytes:
        return LimitExceededError(
            f"target {target.name!r}: message of {size} bytes is over the "
            f"{target.max_message_bytes}-byte limit (max_message_bytes)"
        )
    headers.extend(injected)
    return OutgoingMessage(m.key or None, m.value, headers, m.partition if explicit else -1)


def _result(outcome: Outcome) -> Any:
    if isinstance(outcome, Delivered):
        return sidecar_pb2.PublishResult(partition=outcome.partition, offset=outcome.offset)
    return sidecar_pb2.PublishResult(error=f"{outcome.grpc_status.name}: {outcome}")
