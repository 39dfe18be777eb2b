"""Admin HTTP endpoint: /healthz, /readyz, /metrics, /status (aiohttp, TCP or Unix socket)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.config import Admin
from sidecar.errors import ListenerError


class AdminServer:
    """Serves the daemon's state; `state()` is read per request."""

    def __init__(self, admin: Admin, ready: Callable[[], tuple[bool, list[str]]],
                 status: Callable[[], dict[str, Any]], metrics: Callable[[], bytes]) -> None:
        self._admin = admin
        self._ready = ready
        self._status = status
        self._metrics = metrics
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status_json)
        app.router.add_get("/metrics", self._metrics_text)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site: web.BaseSite
        if self._admin.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._admin.unix_path)
            site = web.UnixSite(self._runner, self._admin.unix_path)
        else:
            site = web.TCPSite(self._runner, self._admin.host, self._admin.port)
        try:
            await site.start()
        except OSError as e:
            where = (f"unix:{self._admin.unix_path}" if self._admin.unix_path is not None
                     else f"{self._admin.host}:{self._admin.port}")
            reason = "address in use (another sidecar?)" if e.errno == errno.EADDRINUSE \
                else (e.strerror or str(e))
            raise ListenerError(
                f"admin.address: cannot listen on {where}: {reason}; stop the other process "
                "or choose another admin.address (null turns the endpoint off)") from e

    async def close(self) -> None:
        await self._runner.cleanup()
        if self._admin.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._admin.unix_path)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reasons = self._ready()
        body = orjson.dumps({"ready": ready, "reasons": reasons})
        return web.Response(body=body, status=200 if ready else 503,
                            content_type="application/json")

    async def _metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status_json(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self._status(), option=orjson.OPT_INDENT_2)
        return web.Response(body=body, content_type="application/json")
