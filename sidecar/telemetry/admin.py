"""Admin HTTP endpoint (aiohttp, TCP or Unix socket): /healthz, /readyz, /metrics, /status,
/config (redacted), POST /log_level and POST /drain, and /live, /ready as Envoy and
Linkerd name the probes. It changes the running daemon: never expose it beyond the
pod or host."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE

from sidecar.config import LOG_LEVELS, Admin
from sidecar.errors import ListenerError

log = logging.getLogger("sidecar.admin")


class AdminServer:
    """Serves the daemon's state; `state()` is read per request."""

    def __init__(self, admin: Admin, ready: Callable[[], tuple[bool, list[str]]],
                 status: Callable[[], dict[str, Any]], metrics: Callable[[bool], bytes], *,
                 config: Callable[[], dict[str, Any]], log_level: Callable[[str], str],
                 drain: Callable[[], None]) -> None:
        self._admin = admin
        self._ready = ready
        self._status = status
        self._metrics = metrics
        self._config = config
        self._log_level = log_level
        self._drain = drain
        app = web.Application(middlewares=[_log_request])
        for path in ("/healthz", "/live"):
            app.router.add_get(path, self._healthz)
        for path in ("/readyz", "/ready"):
            app.router.add_get(path, self._readyz)
        app.router.add_get("/status", self._status_json)
        app.router.add_get("/metrics", self._metrics_text)
        app.router.add_get("/config", self._config_json)
        app.router.add_post("/log_level", self._set_log_level)
        app.router.add_post("/drain", self._start_drain)
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
        # OpenMetrics when the scraper asks for it (Prometheus does, for exemplars).
        accept = request.headers.get("Accept", "")
        openmetrics = any(part.split(";")[0].strip() == "application/openmetrics-text"
                          for part in accept.split(","))
        body = self._metrics(openmetrics)
        content_type = OPENMETRICS_TYPE if openmetrics else CONTENT_TYPE_LATEST
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _status_json(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self._status(), option=orjson.OPT_INDENT_2)
        return web.Response(body=body, content_type="application/json")

    async def _config_json(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self._config(), option=orjson.OPT_INDENT_2)
        return web.Response(body=body, content_type="application/json")

    async def _set_log_level(self, request: web.Request) -> web.Response:
        level = request.query.get("level", "").lower()
        if level not in LOG_LEVELS:
            return _json({"error": f"level must be one of {', '.join(LOG_LEVELS)}"}, 400)
        previous = self._log_level(level)
        return _json({"level": level, "previous": previous}, 200)

    async def _start_drain(self, request: web.Request) -> web.Response:
        self._drain()
        return _json({"draining": True}, 202)


@web.middleware
async def _log_request(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                       ) -> web.StreamResponse:
    """A debug line per admin request (`POST /log_level?level=debug` shows them)."""
    response = await handler(request)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("admin request", extra={"fields": {
            "method": request.method, "path": request.path, "http_status": response.status}})
    return response


def _json(data: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
