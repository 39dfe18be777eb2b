"""HttpProxy.Call through a real daemon to a real aiohttp upstream."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import ROOT, Daemon, eventually, free_port
from tests.http_upstream import (
    HttpUpstream,
    http_config,
    run_http_upstream,
    stop_http_upstream,
)

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
SECRET = "key-7c1d2e3f4a5b"


def call(d: Daemon, method: str, path: str, body: bytes = b"", target: str = "web",
         headers: dict[str, str] | None = None, metadata: list[tuple[str, str]] | None = None,
         timeout: float = 10) -> Any:
    request = sidecar_pb2.HttpRequest(
        target=target, method=method, path=path, body=body,
        headers=[sidecar_pb2.Header(name=k, value=v) for k, v in (headers or {}).items()])
    with d.channel() as ch:
        return sidecar_pb2_grpc.HttpProxyStub(ch).Call(request, metadata=metadata,
                                                       timeout=timeout)


def error_of(d: Daemon, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(d, *args, **kwargs)
    return err.value


@pytest.fixture
def web_daemon(daemon_factory: Callable[..., Daemon], short_dir: Path,
               http_upstream: HttpUpstream) -> Daemon:
    return daemon_factory(
        http_config(str(short_dir / "app.sock"), http_upstream.url,
                    headers={"X-Api-Key": "${WEB_KEY}"}),
        env={"WEB_KEY": SECRET})


def test_post_with_body_and_query_arrives_intact_with_injected_headers(
    web_daemon: Daemon, http_upstream: HttpUpstream
) -> None:
    body = bytes(range(256)) * 64
    reply = call(web_daemon, "POST", "/echo?a=1&b=x%20y", body,
                 headers={"Content-Type": "application/octet-stream", "X-Custom": "kept",
                          "Connection": "close", "X-User-Id": "forged"},
                 metadata=[("x-user-id", "alice"), ("x-correlation-id", "corr-1"),
                           ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                           "00f067aa0ba902b7-01")])
    assert reply.status == 200 and reply.body == body
    got = http_upstream.received[-1]
    assert got.method == "POST" and got.path_qs == "/echo?a=1&b=x%20y" and got.body == body
    assert got.headers["X-Custom"] == "kept"
    assert got.headers["X-User-Id"] == "alice"  # the daemon's, not the forged header
    assert got.headers["X-Correlation-Id"] == "corr-1"
    assert UUID4.fullmatch(got.headers["X-Request-Id"])
    assert got.headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert got.headers["X-Api-Key"] == SECRET
    assert got.headers.get("Connection", "").lower() != "close"
    web_daemon.stop()
    assert SECRET not in web_daemon.log_path.read_text()


def test_authorization_is_forwarded_only_when_the_target_allows(
    daemon_factory: Callable[..., Daemon], short_dir: Path, http_upstream: HttpUpstream
) -> None:
    config = http_config(str(short_dir / "app.sock"), http_upstream.url)
    config["targets"]["open"] = {"kind": "http", "base_url": http_upstream.url,
                                 "forward_authorization": True}
    d = daemon_factory(config)
    md = [("authorization", "Bearer t0k")]
    call(d, "GET", "/echo", metadata=md)
    assert "Authorization" not in http_upstream.received[-1].headers
    call(d, "GET", "/echo", target="open", metadata=md)
    assert http_upstream.received[-1].headers["Authorization"] == "Bearer t0k"


@pytest.mark.parametrize("code", [404, 503])
def test_upstream_status_is_data_with_headers_and_body(web_daemon: Daemon, code: int) -> None:
    reply = call(web_daemon, "POST", f"/status/{code}")
    assert reply.status == code
    assert reply.body == f"status {code}".encode()
    assert {"X-Upstream": "yes"}.items() <= {h.name: h.value for h in reply.headers}.items()


def test_get_is_retried_through_two_503s_under_one_request_id(
    web_daemon: Daemon, http_upstream: HttpUpstream
) -> None:
    reply = call(web_daemon, "GET", "/flaky/2")
    assert reply.status == 200 and reply.body == b"ok"
    tries = http_upstream.paths("/flaky")
    assert len(tries) == 3
    assert len({t.headers["X-Request-Id"] for t in tries}) == 1


def test_post_is_not_retried(web_daemon: Daemon, http_upstream: HttpUpstream) -> None:
    assert call(web_daemon, "POST", "/flaky/1").status == 503
    assert len(http_upstream.paths("/flaky")) == 1


def test_retry_after_is_honoured(web_daemon: Daemon, http_upstream: HttpUpstream) -> None:
    started = time.monotonic()
    assert call(web_daemon, "GET", "/flaky/1?retry_after=1").status == 200
    assert time.monotonic() - started >= 1.0  # a lower bound: a busy machine only adds to it


def test_concurrency_is_bounded_by_max_per_host_and_connections_are_reused(
    daemon_factory: Callable[..., Daemon], short_dir: Path, http_upstream: HttpUpstream
) -> None:
    d = daemon_factory(http_config(str(short_dir / "app.sock"), http_upstream.url,
                                   pool={"max_per_host": 5}))
    for _ in range(10):
        call(d, "GET", "/echo")
    assert len({r.peer_port for r in http_upstream.received}) == 1
    http_upstream.received.clear()
    with futures.ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: call(d, "GET", "/slow/20"), range(200)))
    assert all(r.status == 200 for r in replies)
    assert 1 < len({r.peer_port for r in http_upstream.received}) <= 5


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("path", ["/big/20", "/chunked/20"])
def test_response_over_max_body_is_refused_without_buffering_it(
    web_daemon: Daemon, path: str
) -> None:
    call(web_daemon, "GET", "/echo")
    before = _peak_rss_kib(web_daemon.process.pid)
    err = error_of(web_daemon, "GET", path)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'web'" in err.details() and "max_body" in err.details()
    grown_mib = (_peak_rss_kib(web_daemon.process.pid) - before) / 1024
    # streamed bodies may be read up to the limit; a declared length is refused unread
    assert grown_mib < (20 if path.startswith("/chunked") else 4)
    assert call(web_daemon, "GET", "/echo").status == 200


def test_request_body_over_max_body_is_refused(
    daemon_factory: Callable[..., Daemon], short_dir: Path, http_upstream: HttpUpstream
) -> None:
    d = daemon_factory(http_config(str(short_dir / "app.sock"), http_upstream.url,
                                   max_body="1KiB"))
    err = error_of(d, "POST", "/echo", b"z" * 2048)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert http_upstream.received == []


def test_upstream_down_is_unavailable_and_opens_the_breaker(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    d = daemon_factory(http_config(str(short_dir / "app.sock"),
                                   f"http://127.0.0.1:{free_port()}",
                                   breaker={"failures": 3, "reset": "30s"}))
    err = error_of(d, "GET", "/anything")
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert "'web'" in err.details() and "refused" in err.details()
    err = error_of(d, "GET", "/anything")
    assert "circuit open" in err.details()


@pytest.mark.parametrize(
    ("target", "method", "path", "code"),
    [("nope", "GET", "/", grpc.StatusCode.NOT_FOUND),
     ("", "GET", "/", grpc.StatusCode.INVALID_ARGUMENT),
     ("web", "BREW", "/", grpc.StatusCode.INVALID_ARGUMENT),
     ("web", "GET", "no-slash", grpc.StatusCode.INVALID_ARGUMENT)],
)
def test_bad_requests_get_the_contract_codes(
    web_daemon: Daemon, target: str, method: str, path: str, code: grpc.StatusCode
) -> None:
    assert error_of(web_daemon, method, path, target=target).code() is code


def test_active_health_check_feeds_health_service(
    daemon_factory: Callable[..., Daemon], short_dir: Path, http_upstream: HttpUpstream
) -> None:
    d = daemon_factory(http_config(str(short_dir / "app.sock"), http_upstream.url,
                                   health={"path": "/health", "interval": "100ms"}))

    def status() -> int:
        with d.channel() as ch:
            return int(health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="web"), timeout=5).status)

    assert status() == health_pb2.HealthCheckResponse.SERVING
    http_upstream.healthy = False
    eventually(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING)


def test_http_upstream_on_a_unix_socket(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    up, thread = run_http_upstream(str(short_dir / "http.sock"))
    try:
        d = daemon_factory(http_config(str(short_dir / "app.sock"), "http://localhost",
                                       unix_socket=str(short_dir / "http.sock")))
        reply = call(d, "PUT", "/echo?via=uds", b"over a unix socket")
        assert reply.status == 200 and reply.body == b"over a unix socket"
        assert up.received[-1].path_qs == "/echo?via=uds"
    finally:
        stop_http_upstream(up, thread)


def test_http_cli(web_daemon: Daemon) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "http", "--socket", web_daemon.socket, "web", "POST",
         "/status/418", "-H", "X-A: b", "--data", "hi"],
        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP 418")
    assert out.stdout.rstrip().endswith("status 418")


def test_https_upstream_with_mtls(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("web.internal")
    client_cert = ca.issue_cert("sidecar.client")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # mTLS: the daemon must show its cert
    files = {name: str(short_dir / f"{name}.pem") for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(files["ca"])
    client_cert.cert_chain_pems[0].write_to_path(files["cert"])
    client_cert.private_key_pem.write_to_path(files["key"])
    up, thread = run_http_upstream(ssl_context=server_ctx)
    try:
        config = http_config(str(short_dir / "app.sock"), f"https://127.0.0.1:{up.port}",
                             tls={"ca_file": files["ca"], "cert_file": files["cert"],
                                  "key_file": files["key"], "server_name": "web.internal"})
        config["targets"]["plain"] = {  # same server, no client certificate: refused
            "kind": "http", "base_url": f"https://127.0.0.1:{up.port}",
            "tls": {"ca_file": files["ca"], "server_name": "web.internal"}}
        d = daemon_factory(config)
        reply = call(d, "POST", "/echo", b"over mTLS")
        assert reply.status == 200 and reply.body == b"over mTLS"
        err = error_of(d, "GET", "/echo", target="plain")
        assert err.code() is grpc.StatusCode.UNAVAILABLE and "'plain'" in err.details()
    finally:
        stop_http_upstream(up, thread)
