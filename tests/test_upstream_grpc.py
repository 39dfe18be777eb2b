"""gRPC upstream reach: TCP and DNS addresses, pooled connections, TLS and mTLS, size limits."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from tests.conftest import Daemon, Upstream, basic_config, eventually, free_port


class TcpEcho:
    """A gRPC echo server on 127.0.0.1 that records each caller's peer address."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None,
                 max_streams: int | None = None) -> None:
        self.peers: list[str] = []
        self.held: list[str] = []
        self.release = threading.Event()
        self.port = free_port()
        options = [] if max_streams is None else [("grpc.max_concurrent_streams", max_streams)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.peers.append(context.peer())
            return request

        def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.held.append(context.peer())
            self.release.wait(10)
            return request

        handler = grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(echo),
            "Hold": grpc.unary_unary_rpc_method_handler(hold)})
        self.server.add_generic_rpc_handlers((handler,))
        address = f"127.0.0.1:{self.port}"
        if credentials is None:
            self.server.add_insecure_port(address)
        else:
            self.server.add_secure_port(address, credentials)
        self.server.start()

    def stop(self) -> None:
        self.release.set()
        self.server.stop(0).wait()


@pytest.fixture
def tcp_echo() -> Iterator[TcpEcho]:
    server = TcpEcho()
    yield server
    server.stop()


def _target_config(short_dir: Path, target: dict[str, Any]) -> dict[str, Any]:
    config = basic_config(short_dir, None, default_target="up")
    config["targets"]["up"] = {"kind": "grpc", **target}
    return config


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "dns:///localhost:{port}",
                                  "ipv4:127.0.0.1:{port}"])
def test_tcp_address_forms_reach_the_upstream(
    daemon_factory: Callable[..., Daemon], short_dir: Path, tcp_echo: TcpEcho, form: str
) -> None:
    d = daemon_factory(_target_config(short_dir, {"address": form.format(port=tcp_echo.port)}))
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"tcp", timeout=5) == b"tcp"


def test_pool_opens_more_connections_when_the_upstreams_stream_limit_is_full(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    """Calls share a connection as streams up to the upstream's MAX_CONCURRENT_STREAMS (2
    here); the pool opens another when those are full, never more than pool.connections."""
    echo = TcpEcho(max_streams=2)
    try:
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{echo.port}", "pool": {"connections": 3}}))
        with d.channel() as ch, futures.ThreadPoolExecutor(8) as threads:
            stub = ch.unary_unary("/test.Echo/Hold")
            calls = [threads.submit(stub, b"%d" % i, timeout=20) for i in range(8)]
            eventually(lambda: len(echo.held) == 6)  # 3 connections x 2 streams
            assert len(set(echo.held)) == 3
            echo.release.set()
            assert sorted(c.result() for c in calls) == sorted(b"%d" % i for i in range(8))
        assert len(echo.held) == 8 and len(set(echo.held)) == 3
    finally:
        echo.stop()


def test_sequential_calls_reuse_one_connection(
    daemon_factory: Callable[..., Daemon], short_dir: Path, tcp_echo: TcpEcho
) -> None:
    d = daemon_factory(_target_config(short_dir, {"address": f"127.0.0.1:{tcp_echo.port}"}))
    with d.channel() as ch:
        for _ in range(20):
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    assert len(set(tcp_echo.peers)) == 1


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _tls_files(short_dir: Path, ca: trustme.CA, name: str) -> dict[str, str]:
    cert = ca.issue_cert(name)
    files = {"ca_file": short_dir / "ca.pem", "cert_file": short_dir / f"{name}.pem",
             "key_file": short_dir / f"{name}.key"}
    ca.cert_pem.write_to_path(str(files["ca_file"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert_file"]))
    cert.private_key_pem.write_to_path(str(files["key_file"]))
    return {k: str(v) for k, v in files.items()}


def test_tls_and_mtls_upstream(
    daemon_factory: Callable[..., Daemon], short_dir: Path, ca: trustme.CA
) -> None:
    server_cert = ca.issue_cert("upstream.internal")
    credentials = grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    server = TcpEcho(credentials)
    try:
        client = _tls_files(short_dir, ca, "sidecar.client")
        tls = {**client, "server_name": "upstream.internal"}
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}", "tls": tls}))
        with d.channel() as ch:
            assert ch.unary_unary("/test.Echo/Unary")(b"secure", timeout=5) == b"secure"
    finally:
        server.stop()


def test_tls_upstream_with_unknown_ca_is_refused(
    daemon_factory: Callable[..., Daemon], short_dir: Path, ca: trustme.CA
) -> None:
    server_cert = trustme.CA().issue_cert("upstream.internal")  # signed by another CA
    server = TcpEcho(grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())]))
    try:
        ca.cert_pem.write_to_path(str(short_dir / "ca.pem"))
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}",
            "tls": {"ca_file": str(short_dir / "ca.pem"), "server_name": "upstream.internal"}}))
        with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "'up'" in err.value.details()
        assert server.peers == []
    finally:
        server.stop()


def test_message_over_the_target_limit_is_resource_exhausted(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    upstream_factory: Callable[[str], Upstream],
) -> None:
    small, large = upstream_factory("small"), upstream_factory("large")
    config = basic_config(short_dir, small)
    config["targets"]["up"]["limits"] = {"max_message": "1MiB"}
    config["targets"]["large"] = {"kind": "grpc", "address": large.address,
                                  "limits": {"max_message": "8MiB"}}
    d = daemon_factory(config)
    payload = b"x" * (2 * 1024 * 1024)
    with d.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(payload, timeout=5)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'up'" in err.value.details()
        assert small.seen == []
        # the listener takes the largest limit, so the larger target still gets it
        reply = ch.unary_unary("/test.Echo/Unary")(
            payload, metadata=[("sidecar-target", "large")], timeout=5)
        assert reply == payload
