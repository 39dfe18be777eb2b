"""The frame engine's listener under hostile or idle callers, over real sockets: idle
connections reaped, the connection cap, a PING flood from a caller that never reads."""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Daemon, Upstream, basic_config

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
GOAWAY = 7


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(
        ">I", stream) + payload


def raw_caller(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(PREFACE + EMPTY_SETTINGS)
    return s


def read_until_closed(s: socket.socket, timeout: float) -> bytes:
    """Everything the daemon sends until it closes the connection (fails on timeout)."""
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def frame_types(data: bytes) -> list[int]:
    types, position = [], 0
    while len(data) - position >= 9:
        length = int.from_bytes(data[position:position + 3], "big")
        types.append(data[position + 3])
        position += 9 + length
    return types


def test_idle_connection_gets_goaway_and_is_closed(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream, idle_timeout="300ms"))
    with raw_caller(d.socket) as s:
        started = time.monotonic()
        data = read_until_closed(s, timeout=10)
    assert GOAWAY in frame_types(data)
    assert time.monotonic() - started >= 0.3


def test_connections_past_the_cap_are_closed_at_once(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream, max_connections=2))
    callers: list[socket.socket] = []
    served = closed = 0
    try:
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            callers.append(s)
            s.connect(d.socket)
            # A connection past the cap may be closed before our preface is written.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(PREFACE + EMPTY_SETTINGS)
        for s in callers:  # (grpcio's health-check connection may still hold a slot)
            s.settimeout(5)
            try:
                if s.recv(9):
                    served += 1
                else:
                    closed += 1
            except ConnectionResetError:
                closed += 1
    finally:
        for s in callers:
            s.close()
    assert served <= 2 and closed >= 2 and served + closed == 4
    with d.channel() as ch:  # slots are free again
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"


def test_ping_flood_from_a_caller_that_never_reads_is_cut_off(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream))
    ping = frame(6, 0, 0, b"12345678") * 1000
    with raw_caller(d.socket) as s:
        s.settimeout(10)
        cut = False
        try:
            for _ in range(2000):  # up to 2 million PINGs, never reading an answer
                s.sendall(ping)
        except (BrokenPipeError, ConnectionResetError):
            cut = True
    assert cut
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0
