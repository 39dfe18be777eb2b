"""sidecar.v1.Publisher: Kafka publishing through a kafka target (work in progress)."""

from __future__ import annotations

from typing import Any

import grpc

from sidecar._generated import sidecar_pb2_grpc
from sidecar.services.api_call import ApiService


class PublisherService(ApiService, sidecar_pb2_grpc.PublisherServicer):
    async def Publish(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "kafka targets are not supported yet")

    async def PublishBatch(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "kafka targets are not supported yet")
