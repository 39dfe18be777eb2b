"""The frame engine's upstream side over real sockets: TLS and mTLS with ALPN h2, keepalive
PINGs, reconnect backoff, and health and /status read from the engine's pool."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Daemon, Upstream, basic_config, eventually, free_port
from tests.engine.wire import RESPONSE, TRAILERS, Peer, data

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PING, PING_ACK = 6, 1
HEADERS_TYPE, SETTINGS_TYPE, SETTINGS_ACK, MAX_FRAME_SIZE = 1, 4, 1, 5
SETTINGS_ACK_FRAME = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


class TcpEcho:
    """A grpcio echo server on 127.0.0.1 (optionally TLS) recording its callers' peers."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None,
                 options: list[tuple[str, Any]] | None = None) -> None:
        self.peers: list[str] = []
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.peers.append(context.peer())
            return request

        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(echo)})
        self.server.add_generic_rpc_handlers((handler,))
        address = f"127.0.0.1:{self.port}"
        if credentials is None:
            self.server.add_insecure_port(address)
        else:
            self.server.add_secure_port(address, credentials)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()


class RawServer:
    """A TCP server running `serve(conn)` in a thread per connection; counts accepts."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.accepts = 0
        self._serve = serve
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepts += 1
            self._open.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped = True
        self._sock.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)


def read_frames(conn: socket.socket) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each frame a client sends, after its preface;
    ends at EOF."""
    buf = b""

    def need(n: int) -> bytes | None:
        nonlocal buf
        while len(buf) < n:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    if need(len(PREFACE)) is None:
        return
    while True:
        header = need(9)
        if header is None:
            return
        length = int.from_bytes(header[:3], "big")
        payload = need(length) if length else b""
        if payload is None:
            return
        yield header[3], header[4], int.from_bytes(header[5:], "big") & 0x7FFF_FFFF, payload


def _target_config(short_dir: Path, target: dict[str, Any], admin: int | None = None,
                   **listener: Any) -> dict[str, Any]:
    config = basic_config(short_dir, None, default_target="up", **listener)
    config["targets"]["up"] = {"kind": "grpc", **target}
    if admin is not None:
        config["admin"] = {"address": f"127.0.0.1:{admin}"}
    return config


def _get(admin: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as reply:
            return int(reply.status), orjson.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def _records(d: Daemon) -> list[dict[str, Any]]:
    return d.records()


# ---- TLS --------------------------------------------------------------------------------


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


def test_tls_target_with_mtls_is_reached_with_server_name_verified(
    daemon_factory: Callable[..., Daemon], short_dir: Path, ca: trustme.CA
) -> None:
    server_cert = ca.issue_cert("upstream.internal")
    server = TcpEcho(grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(), require_client_auth=True))
    try:
        tls = {**_tls_files(short_dir, ca, "sidecar.client"), "server_name": "upstream.internal"}
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}", "tls": tls}))
        with d.channel() as ch:
            assert ch.unary_unary("/test.Echo/Unary")(b"secure", timeout=5) == b"secure"
        assert len(server.peers) == 1
    finally:
        server.stop()


def test_tls_target_with_a_wrong_server_name_is_refused_naming_the_target(
    daemon_factory: Callable[..., Daemon], short_dir: Path, ca: trustme.CA
) -> None:
    server_cert = ca.issue_cert("upstream.internal")
    server = TcpEcho(grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())]))
    try:
        ca.cert_pem.write_to_path(str(short_dir / "ca.pem"))
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}", "retry": {"attempts": 1},
            "tls": {"ca_file": str(short_dir / "ca.pem"), "server_name": "other.internal"}}))
        with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "target 'up' unreachable: certificate verify failed"
        assert server.peers == []
    finally:
        server.stop()


def test_tls_peer_that_does_not_choose_h2_is_refused_with_a_clear_error(
    daemon_factory: Callable[..., Daemon], short_dir: Path, ca: trustme.CA
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream.internal").configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])

    def serve(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            while tls.recv(4096):
                pass

    server = RawServer(serve)
    try:
        ca.cert_pem.write_to_path(str(short_dir / "ca.pem"))
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}", "retry": {"attempts": 1},
            "tls": {"ca_file": str(short_dir / "ca.pem"), "server_name": "upstream.internal"}}))
        with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == (
            "target 'up' unreachable: TLS peer chose no protocol, not ALPN h2")
    finally:
        server.stop()


# ---- keepalive ----------------------------------------------------------------------------


def test_an_upstream_may_send_64_kib_frames_and_the_caller_gets_them_in_its_own_size(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    """Upstream connections advertise SETTINGS_MAX_FRAME_SIZE 64 KiB (fewer frames to parse
    per byte relayed); the answer's one 64 KiB DATA frame reaches a grpc caller whole."""
    advertised: list[int] = []
    body = bytes(range(256)) * 255 + b"tail"  # 65,284 bytes: a message of one 64 KiB frame
    message = b"\x00" + struct.pack(">I", len(body)) + body
    assert len(message) > 16_384 and len(message) <= 65_536

    def serve(conn: socket.socket) -> None:
        peer = Peer()
        conn.sendall(SETTINGS)
        for kind, flags, stream_id, payload in read_frames(conn):
            if kind == SETTINGS_TYPE and not flags & SETTINGS_ACK:
                advertised.extend(value for setting, value in struct.iter_unpack(">HI", payload)
                                  if setting == MAX_FRAME_SIZE)
                conn.sendall(SETTINGS_ACK_FRAME)
            elif kind == HEADERS_TYPE:
                conn.sendall(peer.headers(stream_id, RESPONSE) + data(stream_id, message)
                             + peer.headers(stream_id, TRAILERS, end_stream=True))

    server = RawServer(serve)
    try:
        d = daemon_factory(_target_config(short_dir, {"address": f"127.0.0.1:{server.port}"}))
        with d.channel() as ch:
            assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=10) == body
        assert advertised == [65_536]
    finally:
        server.stop()


def test_idle_connection_is_pinged_and_kept_while_the_upstream_answers(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    pings: list[bytes] = []

    def serve(conn: socket.socket) -> None:
        conn.sendall(SETTINGS)
        for kind, flags, _, payload in read_frames(conn):
            if kind == PING and not flags & PING_ACK:
                pings.append(payload)
                conn.sendall(struct.pack(">I", 8)[1:] + bytes([PING, PING_ACK]) + b"\0" * 4
                             + payload)

    server = RawServer(serve)
    try:
        daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}",
            "pool": {"keepalive": "50ms", "keepalive_timeout": "5s"}}))
        eventually(lambda: len(pings) >= 3)
        assert server.accepts == 1  # the warm connection, never closed
    finally:
        server.stop()


def test_unanswered_ping_closes_the_connection_and_fails_its_call_as_unavailable(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    closed: list[bool] = []

    def serve(conn: socket.socket) -> None:  # a handshake, then silence
        conn.sendall(SETTINGS)
        for _ in read_frames(conn):
            pass
        closed.append(True)

    server = RawServer(serve)
    try:
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}", "retry": {"attempts": 1}, "timeout": "30s",
            "pool": {"keepalive": "100ms", "keepalive_timeout": "100ms"}}))
        with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=30)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "target 'up' unreachable: keepalive timed out"
        eventually(lambda: closed)
    finally:
        server.stop()


def test_keepalive_pings_pass_a_grpc_server_that_permits_them(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    server = TcpEcho(options=[("grpc.keepalive_permit_without_calls", 1),
                              ("grpc.http2.min_ping_interval_without_data_ms", 10),
                              ("grpc.http2.max_ping_strikes", 0)])
    try:
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}",
            "pool": {"keepalive": "20ms", "keepalive_timeout": "5s"}}))
        with d.channel() as ch:
            for _ in range(20):
                assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
        assert len(set(server.peers)) == 1
    finally:
        server.stop()


# ---- reconnect backoff --------------------------------------------------------------------


def test_many_calls_to_a_failing_upstream_make_few_connects(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    server = RawServer(lambda conn: None)  # accepts and closes: the handshake never completes
    try:
        d = daemon_factory(_target_config(short_dir, {
            "address": f"127.0.0.1:{server.port}", "breaker": {"failures": 1000},
            "retry": {"attempts": 3, "budget": {"min_per_second": 1000}}}))
        calls = 60
        with d.channel() as ch, futures.ThreadPoolExecutor(calls) as pool:
            def call(_: int) -> grpc.RpcError:
                try:
                    ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
                except grpc.RpcError as e:
                    return e
                raise AssertionError("a call got through")

            errors = list(pool.map(call, range(calls)))
        assert {e.code() for e in errors} == {grpc.StatusCode.UNAVAILABLE}
        assert all(e.details().startswith("target 'up' unreachable: ") for e in errors)
        assert server.accepts < calls  # without backoff: at least one connect per attempt
    finally:
        server.stop()


def test_connect_failures_are_retried_once_the_upstream_is_back(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    port = free_port()
    d = daemon_factory(_target_config(short_dir, {
        "address": f"127.0.0.1:{port}", "breaker": {"failures": 1000},
        "retry": {"attempts": 1}}))
    with d.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
        assert err.value.details() == "target 'up' unreachable: connection refused"
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: r)})
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        try:
            def back() -> None:
                assert ch.unary_unary("/test.Echo/Unary")(b"back", timeout=5) == b"back"

            eventually(back)
        finally:
            server.stop(0).wait()


# ---- health and status --------------------------------------------------------------------


def test_status_shows_the_frames_pool_with_its_endpoints(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    admin = free_port()
    config = _target_config(short_dir, {"address": upstream.address}, admin=admin)
    config["targets"]["down"] = {"kind": "grpc", "address": f"127.0.0.1:{free_port()}",
                                 "outlier": {"consecutive_failures": 1}}
    d = daemon_factory(config)
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"

    def frames(name: str) -> dict[str, Any]:
        return dict(_get(admin, "/status")[1]["targets"][name]["frames"])

    up = frames("up")
    assert (up["connections"], up["streams"]) == (1, 0)
    [endpoint] = up["endpoints"]
    assert (endpoint["state"], endpoint["consecutive_failures"]) == ("ready", 0)
    assert endpoint["ejected_until"] is None

    def ejected() -> dict[str, Any]:
        [endpoint] = frames("down")["endpoints"]
        assert endpoint["state"] == "ejected"
        return dict(endpoint)

    endpoint = eventually(ejected)
    assert endpoint["consecutive_failures"] >= 1
    assert endpoint["ejected_for_s"] > 0
    assert endpoint["last_error"] == "connection refused"
    assert d.process.poll() is None


@pytest.mark.parametrize(("address", "reason"), [
    ("unix://{dir}/nobody.sock", "socket not found"),
    ("127.0.0.1:{port}", "connection refused"),
])
def test_a_target_down_at_start_is_one_warning_from_the_frames_pool(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    address: str, reason: str,
) -> None:
    config = _target_config(short_dir, {"address": upstream.address})
    down = address.format(dir=short_dir, port=free_port())
    config["targets"]["down"] = {"kind": "grpc", "address": down}
    d = daemon_factory(config)

    def warnings(target: str) -> list[dict[str, Any]]:
        return [r for r in _records(d)
                if r["severity_text"] == "WARN" and r.get("target") == target]

    [line] = eventually(lambda: warnings("down"))
    assert (line["body"], line["reason"]) == ("target unreachable", reason)
    assert down.split("//")[-1] not in d.log_path.read_text()
    assert warnings("up") == []


def test_required_target_health_follows_the_frames_pool_connects(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    admin, port = free_port(), free_port()
    config = _target_config(short_dir, {"address": f"127.0.0.1:{port}", "required": True,
                                        "pool": {"reconnect": {"base": "10ms", "max": "50ms"}}},
                            admin=admin)
    d = daemon_factory(config)

    def target_health() -> int:
        with d.channel() as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="up"), timeout=5)
        return int(reply.status)

    eventually(lambda: _get(admin, "/readyz")[0] == 503)
    assert target_health() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _get(admin, "/status")[1]["targets"]["up"]["connections"] == 0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        eventually(lambda: _get(admin, "/readyz")[0] == 200)
        eventually(lambda: target_health() == health_pb2.HealthCheckResponse.SERVING)
        d.wait_log("target reachable")
    finally:
        server.stop(0).wait()
