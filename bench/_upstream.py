"""Upstream for the benchmarks: `/bench.Echo/Unary` echoes the request bytes back;
`/bench.Echo/Stream` answers a request of N (decimal) with N messages of 1 MiB.

Run as `python _upstream.py SOCKET_PATH`; serves until SIGTERM/SIGINT.
A grpc.aio server on uvloop with a generic handler and no (de)serialization.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc
import uvloop


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


STREAM_MESSAGE = b"x" * (1024 * 1024)


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(int(request or b"1")):
        yield STREAM_MESSAGE


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("bench.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(_echo),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    })


async def _serve(socket_path: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_handler(),))
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(None)


if __name__ == "__main__":
    uvloop.run(_serve(sys.argv[1]))
