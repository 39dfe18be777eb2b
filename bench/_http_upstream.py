"""HTTP upstream for the benchmark: `GET /item` returns BODY_BYTES bytes, `POST /echo` echoes.

Run as `python _http_upstream.py PORT BODY_BYTES`; listens on 127.0.0.1:PORT
until SIGTERM/SIGINT. An aiohttp server on uvloop, access log off.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiohttp import web


def _app(size: int) -> web.Application:
    item = b"x" * size

    async def get_item(request: web.Request) -> web.Response:
        return web.Response(body=item, content_type="application/octet-stream")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/item", get_item)
    app.router.add_post("/echo", echo)
    return app


async def _serve(port: int, size: int) -> None:
    runner = web.AppRunner(_app(size), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1]), int(sys.argv[2])))
