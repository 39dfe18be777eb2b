"""The daemon's lifecycle in one place: start, ready, reload, drain, stop.

Shutdown order, written once (`Daemon.shutdown`): stop accepting and drain
calls (up to `drain_timeout`, or at once on a second signal), flush producers
and close upstreams of every runtime (also those a reload replaced), remove
sockets, report.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

import uvloop

from sidecar import __version__, build
from sidecar.config import Config, Listener
from sidecar.config_loader import load_config
from sidecar.config_watch import ConfigWatcher
from sidecar.context import mapped_user
from sidecar.engine.server import EngineListener
from sidecar.errors import ConfigError, SidecarError
from sidecar.runtime import Runtime
from sidecar.services.health import HealthReporter
from sidecar.systemd import Notifier
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.logging import current_level, set_level
from sidecar.telemetry.redaction import redacted_config

if TYPE_CHECKING:  # aiohttp is loaded only when admin.address is set
    from sidecar.telemetry.admin import AdminServer

log = logging.getLogger("sidecar")
_HEALTH_REFRESH = 1.0  # seconds between target health updates
_FORCED_FLUSH = 1.0  # seconds Kafka may still flush after a second stop signal
# A young-generation collection after 10,000 new container objects rather than 700: a
# PublishBatch of 500 makes thousands (upb wrappers, callbacks, header lists) and each
# collection scanned the batch's live ones again (4% of its CPU, perf). Compiled, two
# interleaved rounds: 6.6-6.9 -> 5.7-5.8 ms of daemon CPU per 1000 batched messages.
# Garbage in cycles waits longer, a few MB at most; reference counting frees the rest.
_GC_THRESHOLDS = (10_000, 10, 10)


class Daemon:
    """Owns everything that runs: listeners, runtimes, admin endpoint, notifier."""

    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.runtime = Runtime(config, self._breaker_changed)
        self.telemetry = Telemetry(config, lambda: self.runtime.policies,
                                   lambda: self.runtime.spool_stats())
        self.health = HealthReporter(lambda: self.runtime.target_health())
        self.notifier = Notifier()
        self.listeners: dict[str, EngineListener] = {}
        self.admin: AdminServer | None = None
        self.watcher: ConfigWatcher | None = None
        self.started = time.time()
        self.ready = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()  # a second stop signal: end the drain now
        self._stopping = "stopping (stop signal)"  # /readyz's reason once `_stop` is set
        self._reload = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Runtimes replaced by a reload, still finishing their calls and flushing.
        self._retiring: dict[Runtime, asyncio.Task[None]] = {}

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; the process exit code."""
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(self.serve())

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            await self.startup()
        except Exception as e:  # anything at all: one line and exit 1, nothing left behind
            log.error("startup failed: %s", describe(e))
            self._force.set()
            await self.shutdown()
            return 1
        await self.main_loop()
        await self.shutdown()
        return 0

    async def startup(self) -> None:
        await self.runtime.start()
        for i, listener in enumerate(self.config.listeners):
            self.listeners[listener.name] = await self._start_listener(listener, i)
        if self.config.admin.enabled:
            from sidecar.telemetry.admin import AdminServer

            self.admin = AdminServer(self.config.admin, self.readiness, self.status,
                                     self.telemetry.metrics.render,
                                     config=lambda: redacted_config(self.config),
                                     log_level=self.set_log_level, drain=self.drain)
            await self.admin.start()
        self.health.refresh()
        self._spawn(self._refresh_health())
        if self.notifier.watchdog_interval:
            self._spawn(self._watchdog(self.notifier.watchdog_interval))
        self._watch(self.config)
        gc.collect()
        gc.freeze()  # what start-up built lives as long as the process: never scan it again
        gc.set_threshold(*_GC_THRESHOLDS)
        self.ready = True
        self.notifier.ready()
        log.info("started", extra={"fields": {
            "version": __version__, "build": build(), "config": self.config_path,
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
        """Build the new config's world beside the old one, then swap it in.

        Whatever fails while building it (a bad file, a busy socket, a library's own
        exception) refuses the reload with one log line; the old world keeps serving.
        """
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as e:
            self._refuse_reload("; ".join(e.problems))
            return
        runtime = Runtime(config, self._breaker_changed, previous=self.runtime)
        try:
            await runtime.start()
            await self._swap_listeners(config.listeners)
        except Exception as e:
            self._refuse_reload(describe(e))
            self._retire(runtime, 0)
            return
        old, self.runtime, self.config = self.runtime, runtime, config
        set_level(config.log.level)
        self.telemetry.access.configure(config.log.access)
        self._retire(old, config.drain_timeout)
        self._watch(config)
        self.health.refresh()
        self.notifier.ready()
        log.info("reloaded", extra={"fields": {"config": self.config_path}})

    async def shutdown(self) -> None:
        """Stop accepting, drain calls, flush producers, close pools, remove sockets, report.

        A second stop signal (`_force`) cuts the drain short: listeners stop at once and
        producers get at most `_FORCED_FLUSH` seconds."""
        self.ready = False
        self.notifier.stopping()
        drain = self.config.drain_timeout
        log.info("stopping", extra={"fields": {"drain_timeout_s": drain}})
        if self.watcher is not None:
            self.watcher.close()
        self.health.shutting_down()
        listeners = list(self.listeners.values())  # kept meanwhile: /status shows the drain
        draining = asyncio.gather(*(s.stop(drain) for s in listeners))
        if not await self._unless_forced(draining):
            await asyncio.gather(*(s.stop(0) for s in listeners))
        self.listeners.clear()
        for task in self._tasks:
            task.cancel()
        runtimes = [*self._retiring, self.runtime]
        closing = asyncio.ensure_future(
            asyncio.gather(*(r.close(0, drain) for r in runtimes), return_exceptions=True))
        if not await self._unless_forced(closing):
            done, _ = await asyncio.wait((closing,), timeout=_FORCED_FLUSH)
            if not done:
                closing.cancel()
                log.warning("stop forced: producers not flushed in %ss", _FORCED_FLUSH)
        for task in self._retiring.values():
            task.cancel()
        if self.admin is not None:
            await self.admin.close()
        self.telemetry.shutdown()
        log.info("stopped", extra={"fields": {"forced": self._force.is_set()}})

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready when listeners are bound and every required target is healthy; not from
        the moment a stop (signal or `POST /drain`) is asked for."""
        if self._stop.is_set():
            return False, [self._stopping]
        if not self.ready:
            return False, ["listeners not serving"]
        health = self.runtime.target_health()
        reasons = [
            f"target {name!r} unhealthy"
            for name, target in self.config.targets.items()
            if target.required and not health.get(name, False)
        ]
        return not reasons, reasons

    def drain(self) -> None:
        """`POST /drain`: fail readiness now, then stop as SIGTERM does (a repeat is no
        second signal: it never cuts the drain short)."""
        if self._stop.is_set():
            return
        self._stopping = "draining (POST /drain)"
        log.info("drain requested", extra={"fields": {"via": "admin"}})
        self._stop.set()

    def set_log_level(self, level: str) -> str:
        """`POST /log_level`: the daemon's level until the next reload; the previous one."""
        previous = current_level()
        set_level(level)
        self.telemetry.access.configure(self.config.log.access)
        log.warning("log level changed", extra={"fields": {"level": level,
                                                           "previous": previous}})
        return previous

    def status(self) -> dict[str, Any]:
        listeners: list[dict[str, Any]] = []
        for ls in self.config.listeners:
            entry: dict[str, Any] = {"name": ls.name, "socket": ls.socket,
                                     "mode": f"{ls.mode:04o}"}
            server = self.listeners.get(ls.name)
            if server is not None:  # none once shutdown has stopped the servers
                entry.update(server.stats())
                entry["peers"] = _peers(server, ls)
            listeners.append(entry)
        return {
            "version": __version__,
            "build": build(),
            "uptime_s": round(time.time() - self.started, 3),
            "config": self.config_path,
            "in_flight": self.runtime.in_flight,
            "listeners": listeners,
            "targets": self.runtime.target_status(),
        }

    async def _start_listener(self, listener: Listener, index: int) -> EngineListener:
        server = EngineListener(
            listener, f"listeners[{index}]", self.config.max_message, lambda: self.runtime,
            self.health, self.telemetry,
        )
        try:
            await server.start()
        except BaseException:
            await server.stop(0)
            raise
        return server

    async def _swap_listeners(self, wanted: tuple[Listener, ...]) -> None:
        """Keep servers whose socket stays, start new sockets, stop the sockets that went."""
        by_socket = {s.listener.socket: s for s in self.listeners.values()}
        started: dict[str, EngineListener] = {}
        try:
            for i, listener in enumerate(wanted):
                if listener.socket not in by_socket:
                    started[listener.name] = await self._start_listener(listener, i)
        except BaseException:
            await asyncio.gather(*(s.stop(0) for s in started.values()))
            raise
        servers = dict(started)
        for i, listener in enumerate(wanted):
            if listener.name not in started:
                server = by_socket.pop(listener.socket)
                server.update(listener, f"listeners[{i}]")
                servers[listener.name] = server
        self.listeners = servers
        for gone in by_socket.values():
            self._spawn(gone.stop(self.config.drain_timeout))

    def _refuse_reload(self, reason: str) -> None:
        log.error("reload refused, keeping the running config: %s", reason,
                  extra={"fields": {"config": self.config_path}})
        self.notifier.ready()

    def _retire(self, runtime: Runtime, grace: float) -> None:
        """Let a replaced runtime finish its calls and flush; shutdown waits for it too."""
        task = asyncio.ensure_future(runtime.close(grace, grace))
        self._retiring[runtime] = task
        task.add_done_callback(lambda _: self._retiring.pop(runtime, None))

    def _watch(self, config: Config) -> None:
        """Start or stop watching the config file as `reload.watch` says."""
        if config.reload.watch and self.watcher is None:
            watcher = ConfigWatcher(self.config_path, config.reload.debounce, self._reload.set)
            if watcher.start():
                self.watcher = watcher
        elif not config.reload.watch and self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def _stop_signal(self) -> None:
        if self._stop.is_set():
            log.warning("second stop signal: ending the drain now")
            self._force.set()
        self._stop.set()

    async def _unless_forced(self, work: asyncio.Future[Any]) -> bool:
        """Wait for `work` unless a forced stop comes first; True when `work` finished."""
        force = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait((work, force), return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()
        return work.done()

    def _breaker_changed(self, target: str, state: str) -> None:
        # After the breaker's transition is over, not inside it.
        asyncio.get_running_loop().call_soon(self.health.refresh)

    async def _refresh_health(self) -> None:
        while True:
            await asyncio.sleep(_HEALTH_REFRESH)
            self.health.refresh()

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def describe(error: BaseException) -> str:
    """One line for a failure at start or reload: ours name their key; others their
    resource and reason, without a traceback."""
    if isinstance(error, SidecarError):
        return str(error)
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror or error}"
    return f"{type(error).__name__}: {error}"


def _peers(server: EngineListener, listener: Listener) -> list[dict[str, Any]]:
    """Per caller connection: the kernel's uid, gid and pid of the process that connected,
    the user id `identity.peers` maps it to (null: none), and its open streams."""
    out: list[dict[str, Any]] = []
    for conn in list(server.connections):
        peer = conn.peer
        if peer is None:
            out.append({"uid": None, "gid": None, "pid": None, "user_id": None,
                        "streams": len(conn.streams)})
            continue
        out.append({"uid": peer.uid, "gid": peer.gid, "pid": peer.pid,
                    "user_id": mapped_user(listener.identity, peer),
                    "streams": len(conn.streams)})
    return out
