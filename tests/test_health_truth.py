"""Health tells the truth: a down target says so at start, a required HTTP target with no
health section is judged by its connects, and `last_error` keeps the upstream fault."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.config import HttpHealth, HttpTarget
from sidecar.config_loader import parse_config
from sidecar.errors import CircuitOpenError, UpstreamUnavailableError
from sidecar.resilience.policy import TargetPolicy
from sidecar.upstreams import http as http_upstream_module
from sidecar.upstreams.http import HttpUpstream
from tests.conftest import Daemon, Upstream, basic_config, eventually, eventually_async, free_port
from tests.http_upstream import run_http_upstream, stop_http_upstream


def _records(d: Daemon) -> list[dict[str, Any]]:
    return d.records()


def _warnings_for(d: Daemon, target: str) -> list[dict[str, Any]]:
    return [r for r in _records(d) if r["severity_text"] == "WARN" and r.get("target") == target]


def _get(admin: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as reply:
            return int(reply.status), orjson.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def _target(admin: int, name: str) -> dict[str, Any]:
    status, body = _get(admin, "/status")
    assert status == 200
    return dict(body["targets"][name])


def _http_call(d: Daemon, target: str = "web", path: str = "/echo") -> Any:
    request = sidecar_pb2.HttpRequest(target=target, method="GET", path=path)
    with d.channel() as ch:
        return sidecar_pb2_grpc.HttpProxyStub(ch).Call(request, timeout=10)


def _grpc_call(d: Daemon, target: str) -> None:
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("sidecar-target", target)],
                                           timeout=10)


def _failure(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def _serving(port: int, socket_path: Path | None) -> Iterator[None]:
    """An HTTP server on the port (TCP) or, given one, on the Unix socket."""
    if socket_path is not None:
        up, thread = run_http_upstream(unix_path=str(socket_path))
        try:
            yield
        finally:
            stop_http_upstream(up, thread)
        return
    server = ThreadingHTTPServer(("127.0.0.1", port), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize(("address", "reason"), [
    ("unix://{dir}/nobody.sock", "socket not found"),
    ("127.0.0.1:{port}", "connection refused"),
])
def test_a_grpc_target_down_at_start_is_one_warning_naming_it_and_the_reason(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    address: str, reason: str,
) -> None:
    config = basic_config(short_dir, upstream)
    down = address.format(dir=short_dir, port=free_port())
    config["targets"]["down"] = {"kind": "grpc", "address": down}
    d = daemon_factory(config)
    [line] = eventually(lambda: _warnings_for(d, "down"))
    assert (line["body"], line["reason"]) == ("target unreachable", reason)
    assert down.split("//")[-1] not in d.log_path.read_text()
    assert _warnings_for(d, "up") == []  # a reachable target has nothing to say


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_a_required_http_target_without_health_section_is_judged_by_its_connects(
    daemon_factory: Callable[..., Daemon], short_dir: Path, via: str
) -> None:
    admin, port = free_port(), free_port()
    socket_path = short_dir / "web.sock"
    where: dict[str, Any] = (
        {"base_url": f"http://127.0.0.1:{port}"} if via == "tcp"
        else {"base_url": "http://localhost", "unix_socket": str(socket_path)})
    config = basic_config(short_dir, None)
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    config["targets"]["web"] = {"kind": "http", "required": True, **where}
    d = daemon_factory(config)

    # Known when the daemon is serving: the first connect was made at start.
    status, body = _get(admin, "/readyz")
    assert status == 503 and "'web'" in body["reasons"][0]
    assert _target(admin, "web")["healthy"] is False
    [line] = _warnings_for(d, "web")
    expected = "connection refused" if via == "tcp" else "no such file or directory"
    assert (line["body"], line["reason"]) == ("target unreachable", expected)

    with _serving(port, socket_path if via == "unix" else None):
        assert _http_call(d).status == 200  # a connect that succeeds: healthy again
        assert _target(admin, "web")["healthy"] is True
        assert _get(admin, "/readyz")[0] == 200


async def test_with_no_calls_a_plain_connect_on_the_health_schedule_finds_the_target_back(
    monkeypatch: pytest.MonkeyPatch, short_dir: Path
) -> None:
    monkeypatch.setattr(http_upstream_module, "_CONNECT_PROBE",
                        HttpHealth(interval=0.02, timeout=1.0))
    port = free_port()
    config = parse_config({
        "listeners": [{"name": "app", "socket": str(short_dir / "app.sock")}],
        "targets": {"web": {"kind": "http", "base_url": f"http://127.0.0.1:{port}",
                            "required": True}},
    })
    target = config.targets["web"]
    assert isinstance(target, HttpTarget)
    upstream = HttpUpstream(target)
    await upstream.start()
    try:
        assert upstream.health() is False
        accepted = 0

        async def accept(reader: Any, writer: Any) -> None:
            nonlocal accepted
            accepted += 1
            writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", port)
        try:
            await eventually_async(upstream.health)
            assert accepted >= 1  # found back by a probe: no call was made
        finally:
            server.close()
            await server.wait_closed()
    finally:
        await upstream.close(0)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_last_error_keeps_the_upstream_fault_while_the_open_breaker_rejects_calls(
    daemon_factory: Callable[..., Daemon], short_dir: Path, kind: str
) -> None:
    admin, closed = free_port(), free_port()
    config = basic_config(short_dir, None)
    config["admin"] = {"address": f"127.0.0.1:{admin}"}
    policy = {"retry": {"attempts": 1}, "breaker": {"failures": 2, "reset": "10m"}}
    if kind == "http":
        config["targets"]["t"] = {"kind": "http", "base_url": f"http://127.0.0.1:{closed}",
                                  **policy}

        def call() -> Any:
            return _http_call(d, "t")
    else:
        config["targets"]["t"] = {"kind": "grpc", "address": f"127.0.0.1:{closed}", **policy}

        def call() -> Any:
            return _grpc_call(d, "t")
    d = daemon_factory(config)

    for _ in range(2):
        fault = _failure(call)
        assert fault.code() is grpc.StatusCode.UNAVAILABLE
        assert "refused" in fault.details()
    for _ in range(3):
        assert "circuit open" in _failure(call).details()

    target = _target(admin, "t")
    assert target["breaker"]["state"] == "open"
    assert target["last_error"] == fault.details()  # the fault, not `circuit open`
    assert target["counters"]["circuit_rejected"] == 3
    assert target["breaker"]["rejected"] == 3
    assert target["counters"]["faults"] == 2


def test_a_circuit_open_refusal_is_counted_but_never_becomes_last_error(short_dir: Path) -> None:
    config = parse_config({
        "listeners": [{"name": "app", "socket": str(short_dir / "app.sock")}],
        "targets": {"t": {"kind": "grpc", "address": "127.0.0.1:1"}},
    })
    policy = TargetPolicy(config.targets["t"])
    fault = UpstreamUnavailableError("target 't' unreachable: connection refused")
    policy.note_error(fault)
    policy.note_error(CircuitOpenError("target 't': circuit open after repeated failures"))
    policy.note_error("target 't': circuit open after repeated upstream failures")  # as text
    assert policy.counters.last_error == str(fault)
