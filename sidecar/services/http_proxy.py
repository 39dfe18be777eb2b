"""sidecar.v1.HttpProxy: one HTTP call to an http target (work in progress)."""

from __future__ import annotations

from typing import Any

import grpc

from sidecar._generated import sidecar_pb2_grpc
from sidecar.services.api_call import ApiService


class HttpProxyService(ApiService, sidecar_pb2_grpc.HttpProxyServicer):
    async def Call(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "http targets are not supported yet")
