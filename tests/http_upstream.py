"""A real aiohttp upstream on a real port (or Unix socket), run in its own thread."""

from __future__ import annotations

import asyncio
import gc
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import free_port


@dataclass
class Received:
    method: str
    path_qs: str
    headers: CIMultiDict[str]  # HTTP header names are case-insensitive
    body: bytes
    peer_port: int | None


@dataclass
class HttpUpstream:
    """Records every request. Paths: /echo (body back), /status/N, /flaky/N (503 for
    the first N tries of an X-Request-Id, with `Retry-After` from ?retry_after=),
    /big/MIB (MIB mebibytes, Content-Length set), /chunked/MIB, /slow/MS, /health."""

    port: int = 0
    unix_path: str | None = None
    received: list[Received] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=dict)
    healthy: bool = True
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self, prefix: str) -> list[Received]:
        return [r for r in self.received if r.path_qs.startswith(prefix)]


def _app(up: HttpUpstream) -> web.Application:
    async def record(request: web.Request) -> Received:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        got = Received(request.method, request.path_qs, CIMultiDict(request.headers),
                       await request.read(), peer[1] if isinstance(peer, tuple) else None)
        up.received.append(got)
        return got

    async def echo(request: web.Request) -> web.Response:
        got = await record(request)
        return web.Response(body=got.body, headers={"X-Echo-Method": got.method})

    async def status(request: web.Request) -> web.Response:
        await record(request)
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}", headers={"X-Upstream": "yes"})

    async def flaky(request: web.Request) -> web.Response:
        got = await record(request)
        rid = got.headers.get("X-Request-Id", "")
        tries = up.tries[rid] = up.tries.get(rid, 0) + 1
        if tries <= int(request.match_info["n"]):
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=503, text="busy", headers=headers)
        return web.Response(text="ok")

    async def big(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=b"x" * (int(request.match_info["mib"]) * 1024 * 1024))

    async def chunked(request: web.Request) -> web.StreamResponse:
        await record(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"y" * (1024 * 1024)
        for _ in range(int(request.match_info["mib"])):
            try:
                await response.write(chunk)
            except (ConnectionResetError, RuntimeError):
                break
        return response

    async def slow(request: web.Request) -> web.Response:
        await record(request)
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(text="slow")

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if up.healthy else 500)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/flaky/{n}", flaky)
    app.router.add_get("/big/{mib}", big)
    app.router.add_get("/chunked/{mib}", chunked)
    app.router.add_get("/slow/{ms}", slow)
    app.router.add_get("/health", health)
    return app


def run_http_upstream(
    unix_path: str | None = None, ssl_context: ssl.SSLContext | None = None
) -> tuple[HttpUpstream, threading.Thread]:
    up = HttpUpstream(port=0 if unix_path else free_port(), unix_path=unix_path)
    ready = threading.Event()

    def serve() -> None:
        loop = asyncio.new_event_loop()
        up._loop = loop
        runner = web.AppRunner(_app(up), access_log=None)
        up._runner = runner
        loop.run_until_complete(runner.setup())
        site: web.BaseSite = (web.UnixSite(runner, unix_path) if unix_path
                              else web.TCPSite(runner, "127.0.0.1", up.port,
                                               ssl_context=ssl_context))
        loop.run_until_complete(site.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "aiohttp upstream did not start"
    return up, thread


def stop_http_upstream(up: HttpUpstream, thread: threading.Thread) -> None:
    assert up._loop is not None
    up._loop.call_soon_threadsafe(up._loop.stop)
    thread.join(10)
    # A TLS handshake the server refused leaves a transport aiohttp does not track;
    # collect it here, where its ResourceWarning is expected, not in a later test.
    up._loop = up._runner = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def http_upstream() -> Iterator[HttpUpstream]:
    up, thread = run_http_upstream()
    yield up
    stop_http_upstream(up, thread)


def http_config(socket: str, base_url: str, **target: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "app", "socket": socket}],
        "admin": {"address": None},
        "targets": {"web": {"kind": "http", "base_url": base_url, **target}},
    }
