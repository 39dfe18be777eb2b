"""sidecar.v1 HttpProxy and Publisher: answer UNIMPLEMENTED until their upstream kinds land."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from sidecar._generated import sidecar_pb2_grpc


class HttpProxyService(sidecar_pb2_grpc.HttpProxyServicer):
    async def Call(self, request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "http targets are not supported yet")
        raise AssertionError("abort returns never")


class PublisherService(sidecar_pb2_grpc.PublisherServicer):
    async def Publish(self, request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "kafka targets are not supported yet")
        raise AssertionError("abort returns never")

    async def PublishBatch(self, request: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "kafka targets are not supported yet")
        raise AssertionError("abort returns never")
