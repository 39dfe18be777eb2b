"""The daemon's lifecycle in one place: start, ready, reload, drain, stop.

Shutdown order, written once: stop accepting and drain calls (up to
`drain_timeout`), close upstreams, remove sockets, report.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import uvloop

from sidecar import __version__
from sidecar.config import Config, Listener
from sidecar.config_loader import load_config
from sidecar.errors import ConfigError, SidecarError
from sidecar.listeners import ListenerServer
from sidecar.runtime import Runtime
from sidecar.services.health import HealthReporter
from sidecar.systemd import Notifier
from sidecar.telemetry.admin import AdminServer
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.logging import set_level

log = logging.getLogger("sidecar")
_HEALTH_REFRESH = 1.0  # seconds between target health updates


class Daemon:
    """Owns everything that runs: listeners, runtime, admin endpoint, notifier."""

    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.runtime = Runtime(config, self._breaker_changed)
        self.telemetry = Telemetry(config, lambda: self.runtime.policies)
        self.health = HealthReporter(lambda: self.runtime.target_health())
        self.notifier = Notifier()
        self.listeners: dict[str, ListenerServer] = {}
        self.admin: AdminServer | None = None
        self.started = time.time()
        self.ready = False
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; the process exit code."""
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(self.serve())

    async def serve(self) -> int:
        try:
            await self.startup()
        except SidecarError as e:
            log.error("startup failed: %s", e)
            await self.shutdown()
            return 1
        await self.main_loop()
        await self.shutdown()
        return 0

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        await self.runtime.start()
        for listener in self.config.listeners:
            self.listeners[listener.name] = await self._start_listener(listener)
        if self.config.admin.enabled:
            self.admin = AdminServer(self.config.admin, self.readiness, self.status,
                                     self.telemetry.metrics.render)
            await self.admin.start()
        await self.health.refresh()
        self._spawn(self._refresh_health())
        if self.notifier.watchdog_interval:
            self._spawn(self._watchdog(self.notifier.watchdog_interval))
        self.ready = True
        self.notifier.ready()
        log.info("started", extra={"fields": {
            "version": __version__, "config": self.config_path,
            "listeners": [ls.socket for ls in self.config.listeners],
        }})

    async def main_loop(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        while not self._stop.is_set():
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait((stop, reload), return_when=asyncio.FIRST_COMPLETED)
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self.reload()
            reload.cancel()

    async def reload(self) -> None:
        """Build the new config's world beside the old one, then swap it in."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running config: %s",
                      "; ".join(e.problems), extra={"fields": {"config": self.config_path}})
            self.notifier.ready()
            return
        runtime = Runtime(config, self._breaker_changed, previous=self.runtime)
        try:
            await runtime.start()
            await self._swap_listeners(config.listeners)
        except SidecarError as e:
            log.error("reload refused, keeping the running config: %s", e)
            self._spawn(runtime.close(0, 0))
            self.notifier.ready()
            return
        old, self.runtime, self.config = self.runtime, runtime, config
        set_level(config.log.level)
        self.telemetry.access.configure(config.log.access)
        self._spawn(old.close(config.drain_timeout, config.drain_timeout))
        await self.health.refresh()
        self.notifier.ready()
        log.info("reloaded", extra={"fields": {"config": self.config_path}})

    async def shutdown(self) -> None:
        self.ready = False
        self.notifier.stopping()
        log.info("stopping", extra={"fields": {"drain_timeout_s": self.config.drain_timeout}})
        await self.health.shutting_down()
        await asyncio.gather(*(s.stop(self.config.drain_timeout) for s in self.listeners.values()))
        self.listeners.clear()
        for task in self._tasks:
            task.cancel()
        # Listeners have drained: what is left is flushing accepted work (Kafka).
        await self.runtime.close(0, self.config.drain_timeout)
        if self.admin is not None:
            await self.admin.close()
        self.telemetry.shutdown()
        log.info("stopped")

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when listeners are bound and every required target is healthy."""
        if not self.ready:
            return False, ["listeners not serving"]
        health = self.runtime.target_health()
        reasons = [
            f"target {name!r} unhealthy"
            for name, target in self.config.targets.items()
            if target.required and not health.get(name, False)
        ]
        return not reasons, reasons

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "config": self.config_path,
            "in_flight": self.runtime.in_flight,
            "listeners": [
                {"name": ls.name, "socket": ls.socket, "mode": f"{ls.mode:04o}"}
                for ls in self.config.listeners
            ],
            "targets": self.runtime.target_status(),
        }

    async def _start_listener(self, listener: Listener) -> ListenerServer:
        server = ListenerServer(
            listener, self.config.max_message, lambda: self.runtime, self.health, self.telemetry
        )
        await server.start()
        return server

    async def _swap_listeners(self, wanted: tuple[Listener, ...]) -> None:
        """Keep servers whose socket stays, start new sockets, stop the sockets that went."""
        by_socket = {s.listener.socket: s for s in self.listeners.values()}
        started: dict[str, ListenerServer] = {}
        try:
            for listener in wanted:
                if listener.socket not in by_socket:
                    started[listener.name] = await self._start_listener(listener)
        except SidecarError:
            await asyncio.gather(*(s.stop(0) for s in started.values()))
            raise
        servers = dict(started)
        for listener in wanted:
            if listener.name not in started:
                server = by_socket.pop(listener.socket)
                server.update(listener)
                servers[listener.name] = server
        self.listeners = servers
        for gone in by_socket.values():
            self._spawn(gone.stop(self.config.drain_timeout))

    def _breaker_changed(self, target: str, state: str) -> None:
        self._spawn(self.health.refresh())

    async def _refresh_health(self) -> None:
        while True:
            await asyncio.sleep(_HEALTH_REFRESH)
            await self.health.refresh()

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
