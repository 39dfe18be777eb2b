"""Health service, reflection, `sidecar health`, and the admin endpoint."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import ROOT, Daemon, Upstream, basic_config, eventually, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(d: Daemon, service: str) -> int:
    with d.channel() as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


def _two_target_daemon(factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
                       admin_port: int | None = None) -> Daemon:
    config = basic_config(short_dir, upstream)
    config["targets"]["down"] = {"kind": "grpc", "address": f"unix://{short_dir}/nobody.sock",
                                 "required": True}
    if admin_port is not None:
        config["admin"] = {"address": f"127.0.0.1:{admin_port}"}
    return factory(config)


def test_health_reports_daemon_and_each_target(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = _two_target_daemon(daemon_factory, short_dir, upstream)
    assert _check(d, "") == SERVING
    assert _check(d, "up") == SERVING
    # a failed connection marks the target unhealthy
    with d.channel() as ch, contextlib.suppress(grpc.RpcError):
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("sidecar-target", "down")])
    eventually(lambda: _check(d, "down") == NOT_SERVING)


def test_health_cli_exit_codes(daemon: Daemon, short_dir: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "sidecar", "health", "--socket", daemon.socket],
                        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    unknown = subprocess.run(
        [sys.executable, "-m", "sidecar", "health", "--socket", daemon.socket,
         "--service", "no-such-target"],
        capture_output=True, text=True, timeout=30, cwd=ROOT)
    # grpc_health_probe's codes: 3 the health call failed, 2 cannot connect.
    assert unknown.returncode == 3 and "NOT_FOUND" in unknown.stderr
    assert "'no-such-target'" in unknown.stderr
    daemon.stop()
    gone = subprocess.run([sys.executable, "-m", "sidecar", "health", "--socket", daemon.socket,
                           "--timeout", "1"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert gone.returncode == 2 and "cannot reach the daemon" in gone.stderr


def test_reflection_lists_the_daemon_services(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"sidecar.v1.HttpProxy", "sidecar.v1.Publisher", "grpc.health.v1.Health"} <= names


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_admin_healthz_readyz_and_status(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    port = free_port()
    d = _two_target_daemon(daemon_factory, short_dir, upstream, admin_port=port)
    base = f"http://127.0.0.1:{port}"
    assert _get(f"{base}/healthz")[0] == 200
    with d.channel() as ch, contextlib.suppress(grpc.RpcError):
        ch.unary_unary("/test.Echo/Unary")(b"x", metadata=[("sidecar-target", "down")])
    status, body = _get(f"{base}/readyz")
    assert status == 503
    assert "'down'" in orjson.loads(body)["reasons"][0]
    data = orjson.loads(_get(f"{base}/status")[1])
    assert set(data["targets"]) == {"up", "down"}
    assert data["listeners"][0]["socket"] == d.socket
    table = subprocess.run([sys.executable, "-m", "sidecar", "status", "--admin",
                            f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert table.returncode == 0
    assert any(line.startswith("down ") for line in table.stdout.splitlines())


def test_admin_on_unix_socket(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["admin"] = {"address": f"unix:{short_dir}/admin.sock"}
    daemon_factory(config)
    out = subprocess.run([sys.executable, "-m", "sidecar", "status", "--json", "--admin",
                          f"unix:{short_dir}/admin.sock"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0
    assert orjson.loads(out.stdout)["targets"]["up"]["kind"] == "grpc"


def test_readyz_reports_a_down_required_target_before_any_call(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    port = free_port()
    _two_target_daemon(daemon_factory, short_dir, upstream, admin_port=port)

    def not_ready() -> bytes:
        code, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503, f"/readyz answered {code} with a required target down"
        return body

    assert "'down'" in orjson.loads(eventually(not_ready))["reasons"][0]
