"""One HTTP load-generator process on uvloop: closed loop of `GET /item`, direct or via the daemon.

Run as `python _http_loadgen.py MODE TARGET CONCURRENCY SECONDS WARMUP BODY_BYTES`:

- `direct URL`: aiohttp ClientSession, TCPConnector(limit=CONCURRENCY), `GET URL`.
- `daemon unix:SOCKET`: grpc.aio, one channel, `sidecar.v1.HttpProxy/Call` with
  target `web`, `GET /item`.

A call counts only if it answers status 200 with BODY_BYTES bytes of body; other
answers and exceptions are errors. Same protocol with the orchestrator as
`_loadgen.py`: `warm` after the warm-up, waits for a line on stdin, then one JSON
line (calls, errors, elapsed, cpu, latencies_us).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import grpc
import uvloop
from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc

from _loadgen import Window, _wait_for_go

CALL_TIMEOUT = 10.0
TARGET = "web"
PATH = "/item"
Call = Callable[[], Awaitable[bool]]
CallErrors = (aiohttp.ClientError, grpc.aio.AioRpcError, TimeoutError)


async def _worker(call: Call, window: Window) -> None:
    while time.perf_counter() < window.deadline:
        started = time.perf_counter_ns()
        try:
            ok = await call()
        except CallErrors:
            ok = False
        if not ok:
            window.errors += 1
            continue
        window.latencies_us.append((time.perf_counter_ns() - started) // 1000)


async def _drive(call: Call, concurrency: int, seconds: float) -> Window:
    window = Window(seconds)
    await asyncio.gather(*(_worker(call, window) for _ in range(concurrency)))
    return window


async def _open_direct(stack: AsyncExitStack, url: str, concurrency: int, size: int) -> Call:
    session = await stack.enter_async_context(aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
    ))

    async def call() -> bool:
        async with session.get(url) as response:
            body = await response.read()
        return response.status == 200 and len(body) == size

    return call


async def _open_daemon(stack: AsyncExitStack, target: str, concurrency: int, size: int) -> Call:
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(target))
    stub = sidecar_pb2_grpc.HttpProxyStub(channel)
    request = sidecar_pb2.HttpRequest(target=TARGET, method="GET", path=PATH)

    async def call() -> bool:
        reply = await stub.Call(request, timeout=CALL_TIMEOUT)
        return bool(reply.status == 200 and len(reply.body) == size)

    return call


OPENERS = {"direct": _open_direct, "daemon": _open_daemon}


async def _measure(call: Call, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    await _drive(call, concurrency, warmup)
    await _wait_for_go()
    cpu, wall = time.process_time(), time.perf_counter()
    window = await _drive(call, concurrency, seconds)
    elapsed, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "calls": len(window.latencies_us), "errors": window.errors, "elapsed": elapsed,
        "cpu": cpu, "latencies_us": window.latencies_us,
    }


async def _run(mode: str, target: str, concurrency: int, seconds: float, warmup: float,
               size: int) -> None:
    async with AsyncExitStack() as stack:
        call = await OPENERS[mode](stack, target, concurrency, size)
        result = await _measure(call, concurrency, seconds, warmup)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    mode, target, concurrency, seconds, warmup, size = sys.argv[1:7]
    uvloop.run(_run(mode, target, int(concurrency), float(seconds), float(warmup), int(size)))
