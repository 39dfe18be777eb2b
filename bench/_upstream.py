"""Upstream for the benchmark: `/bench.Echo/Unary` echoes the request bytes back.

Run as `python _upstream.py SOCKET_PATH`; serves until SIGTERM/SIGINT.
A grpc.aio server on uvloop with a generic handler and no (de)serialization.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
import uvloop


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def _handler() -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(_echo)
    return grpc.method_handlers_generic_handler("bench.Echo", {"Unary": method})


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
