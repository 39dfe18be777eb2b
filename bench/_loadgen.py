"""One load-generator process: grpc.aio on uvloop, closed loop, one channel.

Run as `python _loadgen.py TARGET CONCURRENCY SECONDS WARMUP PAYLOAD_BYTES`.
Protocol with the orchestrator: after connecting and warming up it prints
`warm`, waits for a line on stdin, runs the measured window, then prints one
JSON line: calls, errors, elapsed seconds, its own CPU seconds and the
latency of every call in microseconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
import uvloop

METHOD = "/bench.Echo/Unary"
Call = Callable[[bytes], Awaitable[bytes]]


class Window:
    """Calls made until a deadline: their latencies and the error count."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds
        self.latencies_us: list[int] = []
        self.errors = 0


async def _worker(call: Call, payload: bytes, window: Window) -> None:
    while time.perf_counter() < window.deadline:
        started = time.perf_counter_ns()
        try:
            await call(payload)
        except grpc.aio.AioRpcError:
            window.errors += 1
            continue
        window.latencies_us.append((time.perf_counter_ns() - started) // 1000)


async def _drive(call: Call, payload: bytes, concurrency: int, seconds: float) -> Window:
    window = Window(seconds)
    await asyncio.gather(*(_worker(call, payload, window) for _ in range(concurrency)))
    return window


async def _wait_for_go() -> None:
    print("warm", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _run(target: str, concurrency: int, seconds: float, warmup: float, size: int) -> None:
    payload = b"x" * size
    async with grpc.aio.insecure_channel(target) as channel:
        call: Call = channel.unary_unary(METHOD)
        await _drive(call, payload, concurrency, warmup)
        await _wait_for_go()
        cpu, wall = time.process_time(), time.perf_counter()
        window = await _drive(call, payload, concurrency, seconds)
        elapsed, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = {
        "calls": len(window.latencies_us), "errors": window.errors, "elapsed": elapsed,
        "cpu": cpu, "latencies_us": window.latencies_us,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    target, concurrency, seconds, warmup, size = sys.argv[1:6]
    uvloop.run(_run(target, int(concurrency), float(seconds), float(warmup), int(size)))
