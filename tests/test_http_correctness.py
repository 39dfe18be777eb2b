"""HttpProxy.Call's edges over real sockets: invalid requests, the max_body boundary,
an upstream that never answers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.config import DEFAULT_MAX_BODY
from tests.conftest import Daemon
from tests.http_upstream import HttpUpstream, http_config

SECRET = "tok-5e6f7a8b9c0d"
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def call(d: Daemon, method: str, path: str, headers: list[tuple[str, str]] | None = None,
         timeout: float = 10) -> Any:
    request = sidecar_pb2.HttpRequest(
        target="web", method=method, path=path,
        headers=[sidecar_pb2.Header(name=k, value=v) for k, v in headers or ()])
    with grpc.insecure_channel(f"unix:{d.socket}", options=UNLIMITED) as ch:
        return sidecar_pb2_grpc.HttpProxyStub(ch).Call(request, timeout=timeout)


def error_of(d: Daemon, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(d, *args, **kwargs)
    return err.value


@dataclass
class RawHttpServer:
    """HTTP/1.1 by hand on a real port, so bodies are exact to the byte and an answer
    can be withheld. GET or HEAD /sized/N: N bytes with Content-Length; /chunked/N:
    N bytes chunked; /silent: read the request, never answer."""

    port: int = 0
    requests: list[str] = field(default_factory=list)  # request lines, as received
    connections: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                self.requests.append(line)
                method, target, _ = line.split(" ", 2)
                _, kind, *arg = target.split("/")
                if kind == "silent":
                    await reader.read()  # until the daemon gives up and closes
                    return
                size = int(arg[0])
                if kind == "sized":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    if method != "HEAD":
                        writer.write(b"x" * size)
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    half = size // 2
                    for part in (half, size - half):
                        writer.write(b"%x\r\n%s\r\n" % (part, b"y" * part))
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
        self.connections.discard(writer)
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def raw_http() -> Iterator[RawHttpServer]:
    server = RawHttpServer()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        listening = loop.run_until_complete(
            asyncio.start_server(server._serve, "127.0.0.1", 0))
        server.port = listening.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        listening.close()
        for writer in list(server.connections):  # each handler then sees EOF and ends
            writer.close()
        loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop)))
        loop.run_until_complete(listening.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "raw HTTP server did not start"
    yield server
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_invalid_method_path_or_header_is_invalid_argument_naming_the_field(
    daemon_factory: Callable[..., Daemon], short_dir: Path, http_upstream: HttpUpstream
) -> None:
    d = daemon_factory(http_config(str(short_dir / "app.sock"), http_upstream.url))
    cases: list[tuple[str, str, list[tuple[str, str]], str]] = [
        ("GE T", "/echo", [], "method"),
        ("GET\x00", "/echo", [], "method"),
        ("BREW", "/echo", [], "method"),
        ("GET", "echo", [], "path"),
        ("GET", "/echo\x00", [], "path"),
        ("GET", "/echo?a=b c", [], "path"),
        ("GET", "/echo HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /echo", [], "path"),
        ("GET", "/ec\nho", [], "path"),
        ("GET", "/ec\tho", [], "path"),
        ("GET", "/ec\x7fho", [], "path"),
        ("GET", "/echo", [("X-A:B", "v")], "header name"),
        ("GET", "/echo", [("X A", "v")], "header name"),
        ("GET", "/echo", [("", "v")], "header name"),
        ("GET", "/echo", [("X-A\n", "v")], "header name"),
        ("GET", "/echo", [("X-Token", f"{SECRET}\x00")], "value of header 'X-Token'"),
        ("GET", "/echo", [("X-Token", f"{SECRET}\r\nX-Injected: 1")],
         "value of header 'X-Token'"),
        ("GET", "/echo", [("X-Token", f"{SECRET}\n")], "value of header 'X-Token'"),
    ]
    for method, path, headers, what in cases:
        err = error_of(d, method, path, headers)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, path, headers, err)
        details = err.details()
        assert "'web'" in details and f"invalid {what}" in details, (path, headers, details)
        assert SECRET not in details
    assert http_upstream.received == []
    # refused before any attempt, and the daemon is none the worse for it
    reply = call(d, "GET", "/echo?q=a%20b", [("X-Token", "a\tb")])
    assert reply.status == 200
    assert [r.path_qs for r in http_upstream.received] == ["/echo?q=a%20b"]
    assert http_upstream.received[0].headers["X-Token"] == "a\tb"
    d.stop()
    assert "Traceback" not in d.log_path.read_text()


def test_response_of_exactly_max_body_passes_and_one_byte_more_is_resource_exhausted(
    daemon_factory: Callable[..., Daemon], short_dir: Path, raw_http: RawHttpServer
) -> None:
    limit = 64 * 1024
    d = daemon_factory(http_config(str(short_dir / "app.sock"), raw_http.url,
                                   max_body="64KiB"))
    for kind in ("sized", "chunked"):
        reply = call(d, "GET", f"/{kind}/{limit}")
        assert reply.status == 200 and len(reply.body) == limit, kind
        err = error_of(d, "GET", f"/{kind}/{limit + 1}")
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (kind, err)
        assert "'web'" in err.details() and "max_body" in err.details(), err.details()
    # a HEAD answer declares the length of a body it does not carry
    reply = call(d, "HEAD", f"/sized/{limit + 1}")
    assert reply.status == 200 and reply.body == b""


def test_response_of_exactly_the_default_max_body_reaches_the_caller(
    daemon_factory: Callable[..., Daemon], short_dir: Path, http_upstream: HttpUpstream
) -> None:
    """16 MiB is both the default max_body and the default limits.max_message: the
    reply, a few bytes over the body, must still go out."""
    d = daemon_factory(http_config(str(short_dir / "app.sock"), http_upstream.url))
    for path in ("/big/16", "/chunked/16"):
        reply = call(d, "GET", path)
        assert reply.status == 200 and len(reply.body) == DEFAULT_MAX_BODY, path


def test_upstream_that_never_answers_is_deadline_exceeded_naming_the_target(
    daemon_factory: Callable[..., Daemon], short_dir: Path, raw_http: RawHttpServer
) -> None:
    d = daemon_factory(http_config(str(short_dir / "app.sock"), raw_http.url))
    err = error_of(d, "GET", "/silent", timeout=1.5)
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "'web'" in err.details() and "deadline" in err.details(), err.details()
    assert raw_http.requests == ["GET /silent HTTP/1.1"]  # it did reach the upstream
    logged = d.wait_log('"sidecar.status":"DEADLINE_EXCEEDED"')  # the status the caller got
    assert len(logged) == 1 and '"sidecar.target":"web"' in logged[0], logged
    # not retried into the caller's deadline, and the next call is served as usual
    assert call(d, "GET", "/sized/2").status == 200
    assert raw_http.requests == ["GET /silent HTTP/1.1", "GET /sized/2 HTTP/1.1"]
