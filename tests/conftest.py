"""Real servers for tests: an upstream gRPC echo server and the daemon as a process."""

from __future__ import annotations

import os
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
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Tests import the waiting helpers from here: `from tests.conftest import eventually`.
from tests.otlp_receiver import receiver as receiver  # an OTLP trace receiver fixture
from tests.waiting import GiveUp as GiveUp
from tests.waiting import eventually as eventually
from tests.waiting import eventually_async as eventually_async

ROOT = Path(__file__).resolve().parent.parent
# Fixture modules for other real servers (loaded after this module).
pytest_plugins = ["tests.http_upstream"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temporary folder: Unix socket paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sc", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- upstream -------------------------------------------------------------


@dataclass
class Seen:
    """One call as the upstream saw it."""

    method: str
    metadata: dict[str, str | bytes]
    time_remaining: float  # seconds to the call's deadline on arrival (about 9e18: none)
    cancelled: bool = False  # Slow and Hold: the call ended (deadline, cancel) while they waited


@dataclass
class Upstream:
    """A real gRPC server on a Unix socket with echo methods under `/test.Echo/`.

    Unary echoes; ServerStream sends the request back N times (N = first 4 bytes,
    big-endian, of the request, the rest is the payload); ClientStream returns
    all requests joined; Bidi echoes each message; Fail aborts with the code
    named in `fail-code` metadata, details from `fail-details`, and a trailer
    `fail-trailer: yes`; Slow sleeps `sleep-ms` then echoes; Hold echoes once
    `release` is set. Slow and Hold note a call that ends while they wait in its
    `Seen.cancelled` and in `cancelled`.
    """

    address: str
    socket_path: str
    server: grpc.Server
    seen: list[Seen] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)  # lets Hold calls end
    outage: grpc.StatusCode | None = None  # Flaky methods fail with this while set
    tries: dict[str, int] = field(default_factory=dict)  # attempts per request-id
    received: list[list[bytes]] = field(default_factory=list)  # FlakyStream's requests

    def calls(self, method: str) -> int:
        return sum(1 for s in self.seen if s.method == method)

    def stop(self) -> None:
        self.release.set()
        self.server.stop(0).wait()


def _record(up: Upstream, method: str, context: grpc.ServicerContext) -> dict[str, Any]:
    return _seen(up, method, context).metadata


def _seen(up: Upstream, method: str, context: grpc.ServicerContext) -> Seen:
    seen = Seen(method, dict(context.invocation_metadata()), context.time_remaining())
    up.seen.append(seen)
    return seen


def _handlers(up: Upstream) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        _record(up, "Unary", context)
        context.send_initial_metadata((("upstream-header", "present"),))
        context.set_trailing_metadata((("upstream-trailer", "present"),))
        return request

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        _record(up, "ServerStream", context)
        count = int.from_bytes(request[:4], "big")
        for i in range(count):
            yield i.to_bytes(4, "big") + request[4:]

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        _record(up, "ClientStream", context)
        return b"".join(requests)

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        _record(up, "Bidi", context)
        yield from requests

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        md = _record(up, "Fail", context)
        context.set_trailing_metadata((("fail-trailer", "yes"),))
        code = grpc.StatusCode[str(md.get("fail-code", "FAILED_PRECONDITION"))]
        context.abort(code, str(md.get("fail-details", "upstream says no")))
        raise AssertionError

    def wait_unless_cancelled(seen: Seen, context: grpc.ServicerContext,
                              done: Callable[[], bool]) -> bool:
        """Wait until `done()`; False (noted as cancelled) if the call ends first."""
        while not done():
            if not context.is_active():
                seen.cancelled = True
                up.cancelled.set()
                return False
            time.sleep(0.005)
        return True

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen = _seen(up, "Slow", context)
        until = time.monotonic() + int(str(seen.metadata.get("sleep-ms", "1000"))) / 1000
        ended = wait_unless_cancelled(seen, context, lambda: time.monotonic() >= until)
        return request if ended else b""

    def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen = _seen(up, "Hold", context)
        return request if wait_unless_cancelled(seen, context, up.release.is_set) else b""

    def flaky_failure(md: dict[str, Any], context: grpc.ServicerContext) -> None:
        rid = str(md.get("request-id"))
        tries = up.tries[rid] = up.tries.get(rid, 0) + 1
        time.sleep(int(str(md.get("delay-ms", "0"))) / 1000)
        code = up.outage
        if code is None and tries <= int(str(md.get("fail-times", "0"))):
            code = grpc.StatusCode[str(md.get("fail-code", "UNAVAILABLE"))]
        if code is not None:
            if "pushback-ms" in md:
                context.set_trailing_metadata(
                    (("grpc-retry-pushback-ms", str(md["pushback-ms"])),))
            context.abort(code, f"flaky failure {tries}")

    def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
        flaky_failure(_record(up, "Flaky", context), context)
        return request

    def flaky_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        md = _record(up, "FlakyStream", context)
        received = list(requests)
        up.received.append(received)
        flaky_failure(md, context)
        yield from received

    def stream_then_fail(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        _record(up, "StreamThenFail", context)
        yield request
        context.abort(grpc.StatusCode.UNAVAILABLE, "gone after one message")

    table = {
        "/test.Echo/Flaky": grpc.unary_unary_rpc_method_handler(flaky),
        "/test.Echo/FlakyStream": grpc.stream_stream_rpc_method_handler(flaky_stream),
        "/test.Echo/StreamThenFail": grpc.unary_stream_rpc_method_handler(stream_then_fail),
        "/test.Echo/Unary": grpc.unary_unary_rpc_method_handler(unary),
        "/test.Echo/ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "/test.Echo/ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "/test.Echo/Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "/test.Echo/Fail": grpc.unary_unary_rpc_method_handler(fail),
        "/test.Echo/Slow": grpc.unary_unary_rpc_method_handler(slow),
        "/test.Echo/Hold": grpc.unary_unary_rpc_method_handler(hold),
    }

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> Any:
            return table.get(details.method)  # type: ignore[attr-defined]

    return Handler()


def start_upstream(socket_path: str) -> Upstream:
    limit = 64 * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit)],
    )
    up = Upstream(address=f"unix://{socket_path}", socket_path=socket_path, server=server)
    server.add_generic_rpc_handlers((_handlers(up),))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    return up


@pytest.fixture
def upstream_factory(short_dir: Path) -> Iterator[Callable[[str], Upstream]]:
    started: list[Upstream] = []

    def make(name: str = "up") -> Upstream:
        up = start_upstream(str(short_dir / f"{name}.sock"))
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()


@pytest.fixture
def upstream(upstream_factory: Callable[[str], Upstream]) -> Upstream:
    return upstream_factory("up")


# ---- daemon ---------------------------------------------------------------


@dataclass
class Daemon:
    """The daemon running as a real process on a config file."""

    process: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    socket: str
    admin: str | None

    def channel(self, socket: str | None = None) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{socket or self.socket}")

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def records(self) -> list[dict[str, Any]]:
        """The log's JSON records, each with its `attributes` beside the log data
        model's fields (`body`, `severity_text`, `trace_id`, ...)."""
        out = []
        for line in self.log_lines():
            if line.startswith("{"):  # not grpc core's own text
                record = orjson.loads(line)
                out.append({**record.pop("attributes", {}), **record})
        return out

    def access(self) -> list[dict[str, Any]]:
        """The access lines' records, one per call, in order."""
        return [r for r in self.records()
                if r["body"] == "call" and r["scope"] == "sidecar.access"]

    def wait_log(self, needle: str, timeout: float = 10.0) -> list[str]:
        """The log lines containing `needle`, once there is at least one."""

        def found() -> list[str]:
            lines = [ln for ln in self.log_lines() if needle in ln]
            assert lines, f"no line of {self.log_path.name} contains {needle!r}"
            return lines

        return eventually(found, timeout)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_serving(socket_path: str, timeout: float = 15.0,
                 process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll the health service on the socket until SERVING, with a deadline."""

    def serving() -> None:
        if process is not None and process.poll() is not None:
            raise GiveUp(f"daemon exited with {process.returncode} before serving")
        assert os.path.exists(socket_path), f"no socket file at {socket_path}"
        with grpc.insecure_channel(f"unix:{socket_path}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=0.5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, (
            f"health says {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")

    eventually(serving, timeout=timeout)


def wait_accepting(address: str, timeout: float = 15.0,
                   process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `host:port` or `unix:PATH` until it accepts a connection, with a deadline."""

    def accepting() -> None:
        if process is not None and process.poll() is not None:
            raise GiveUp(f"daemon exited with {process.returncode} before accepting")
        if address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.5)
                sock.connect(address[5:])
            return
        host, port = address.rsplit(":", 1)
        socket.create_connection((host.strip("[]"), int(port)), timeout=0.5).close()

    eventually(accepting, timeout=timeout)


def write_config(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config))


def basic_config(short_dir: Path, upstream: Upstream | None, **listener: Any) -> dict[str, Any]:
    """One listener `app` whose default target `up` is the given upstream."""
    targets = {} if upstream is None else {"up": {"kind": "grpc", "address": upstream.address}}
    ls: dict[str, Any] = {"name": "app", "socket": str(short_dir / "app.sock")}
    if upstream is not None:
        ls["default_target"] = "up"
    ls.update(listener)
    return {"listeners": [ls], "admin": {"address": None}, "targets": targets}


@pytest.fixture
def daemon_factory(short_dir: Path) -> Iterator[Callable[..., Daemon]]:
    running: list[Daemon] = []

    def start(config: dict[str, Any], *, wait: bool = True,
              env: dict[str, str] | None = None) -> Daemon:
        config_path = short_dir / f"sidecar{len(running)}.yaml"
        log_path = short_dir / f"daemon{len(running)}.log"
        write_config(config_path, config)
        admin = (config.get("admin") or {}).get("address")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "run", "--config", str(config_path)],
                stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
                env={**os.environ, **(env or {})},
            )
        d = Daemon(process, config_path, log_path, config["listeners"][0]["socket"], admin)
        running.append(d)
        if wait:
            try:
                wait_serving(d.socket, process=process)
                if admin:  # the admin endpoint starts after the listeners
                    wait_accepting(admin, process=process)
            except Exception:
                d.stop()
                print(log_path.read_text())
                raise
        return d

    yield start
    for d in running:
        d.stop()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> Daemon:
    """A daemon with one listener routing everything to `upstream`."""
    return daemon_factory(basic_config(short_dir, upstream))
