"""The frame engine's protections, drain and logs over real sockets: raw-frame peers (the
wire.py helpers) and grpcio callers against a daemon process. Every test also checks that
each line the daemon wrote on stderr is one of our JSON records."""

from __future__ import annotations

import random
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame, SettingsFrame

from tests.conftest import Daemon, Upstream, basic_config, eventually
from tests.engine.daemon_logs import access_log, json_log
from tests.engine.wire import MESSAGE, Peer, continuation, data, goaway, ping, rst_stream, settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
REFUSED_STREAM = 0x7
MAX_CONCURRENT_STREAMS = 0x3
MiB = 1024 * 1024


def request(path: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
            (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), *extra]


class RawCaller:
    """A raw HTTP/2 caller on the daemon's socket: frames out, frames in (parsed lazily)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.peer = Peer()
        self.buffer = b""
        self.sock.sendall(PREFACE + settings())

    def send(self, payload: bytes) -> bool:
        """False once the daemon closed the connection."""
        try:
            self.sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def frames_until(self, done: Callable[[list[Frame]], bool], timeout: float = 10) -> list[Frame]:
        """Read until `done(frames)` or the connection closes; fail at `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.frames()
            if done(frames):
                return frames
            left = deadline - time.monotonic()
            assert left > 0, f"gave up waiting; frames so far: {frames[-5:]}"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return self.frames()
            self.buffer += chunk

    def frames(self) -> list[Frame]:
        out, view = [], memoryview(self.buffer)
        while len(view) >= 9:
            frame, length = Frame.parse_frame_header(view[:9])
            if len(view) < 9 + length:
                break
            frame.parse_body(view[9:9 + length])
            out.append(frame)
            view = view[9 + length:]
        return out

    def close(self) -> None:
        self.sock.close()


def goaways(frames: list[Frame]) -> list[GoAwayFrame]:
    return [f for f in frames if isinstance(f, GoAwayFrame)]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def frames(daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
           ) -> Iterator[Daemon]:
    d = daemon_factory(basic_config(short_dir, upstream))
    yield d
    json_log(d)


def unary(d: Daemon, payload: bytes = b"x") -> bytes:
    with d.channel() as ch:
        reply: bytes = ch.unary_unary("/test.Echo/Unary")(payload, timeout=10)
        return reply


# ---- protections ----------------------------------------------------------------------


def test_continuation_flood_is_refused_before_buffering_and_rss_stays_bounded(
    frames: Daemon,
) -> None:
    """8 connections each try a 16 MiB header block (HEADERS + CONTINUATION): each gets
    GOAWAY ENHANCE_YOUR_CALM at the 16 KiB bound, the daemon's RSS barely moves, and a
    well-behaved caller is answered meanwhile."""
    assert unary(frames) == b"x"
    before = rss_kib(frames.process.pid)
    fragment = b"\x00" * 16_000
    flood = continuation(1, fragment, end_headers=False) * 64  # 1 MiB a send

    def flood_one(_: int) -> list[Frame]:
        caller = RawCaller(frames.socket)
        try:
            head = caller.peer.headers(1, request(b"/test.Echo/Unary"), end_headers=False)
            sent = caller.send(head)
            for _ in range(16):
                sent = sent and caller.send(flood)
            return caller.frames_until(lambda fs: bool(goaways(fs)))
        finally:
            caller.close()

    with futures.ThreadPoolExecutor(8) as pool:
        flooding = [pool.submit(flood_one, i) for i in range(8)]
        assert unary(frames, b"meanwhile") == b"meanwhile"
        results = [f.result(timeout=60) for f in flooding]
    for result in results:
        assert [g.error_code for g in goaways(result)] == [ENHANCE_YOUR_CALM]
    grown_mib = (rss_kib(frames.process.pid) - before) / 1024
    assert grown_mib < 32, f"RSS grew {grown_mib:.0f} MiB under the flood"
    assert unary(frames) == b"x"


def test_concurrent_streams_are_advertised_and_the_excess_refused(
    frames: Daemon, upstream: Upstream,
) -> None:
    caller = RawCaller(frames.socket)
    try:
        first = caller.frames_until(lambda fs: any(isinstance(f, SettingsFrame)
                                                   and "ACK" not in f.flags for f in fs))
        advertised = next(f.settings for f in first if isinstance(f, SettingsFrame))
        limit = advertised[MAX_CONCURRENT_STREAMS]
        assert 0 < limit <= 1000
        caller.send(settings(ack=True))
        out = b"".join(caller.peer.headers(1 + 2 * i, request(b"/test.Echo/Hold"))
                       for i in range(limit + 1))
        caller.send(out)
        excess = 1 + 2 * limit
        got = caller.frames_until(lambda fs: any(isinstance(f, RstStreamFrame) for f in fs))
        resets = [(f.stream_id, f.error_code) for f in got if isinstance(f, RstStreamFrame)]
        assert resets == [(excess, REFUSED_STREAM)]
        assert not goaways(got)
    finally:
        caller.close()
    assert unary(frames) == b"x"


def test_rapid_reset_gets_goaway_and_leaves_other_connections_calls_alone(
    frames: Daemon, upstream: Upstream,
) -> None:
    with frames.channel() as ch:
        held = ch.unary_unary("/test.Echo/Hold").future(b"held", timeout=60)
        eventually(lambda: upstream.calls("Hold") == 1)
        caller = RawCaller(frames.socket)
        try:
            batch = []
            for i in range(20_000):
                sid = 1 + 2 * i
                batch.append(caller.peer.headers(sid, request(b"/test.Echo/Unary")))
                batch.append(rst_stream(sid, 0x8))
                if len(batch) == 2000:
                    if not caller.send(b"".join(batch)):
                        break
                    batch = []
            got = caller.frames_until(lambda fs: bool(goaways(fs)))
        finally:
            caller.close()
        assert [g.error_code for g in goaways(got)] == [ENHANCE_YOUR_CALM]
        assert not upstream.cancelled.is_set()
        upstream.release.set()
        assert held.result(timeout=10) == b"held"
    assert not any(r["sidecar.status"] == "CANCELLED" and r["rpc.service"] == "test.Echo"
                   and r["rpc.method"] == "Hold" for r in access_log(frames))


def test_settings_flood_from_a_caller_that_never_reads_is_cut_off(frames: Daemon) -> None:
    caller = RawCaller(frames.socket)
    flood = settings() * 2000
    try:
        cut = not all(caller.send(flood) for _ in range(1000))
    finally:
        caller.close()
    assert cut
    assert unary(frames) == b"x"


# ---- logs -----------------------------------------------------------------------------

FORGED = b'\n{"severity_text":"ERROR","scope":"sidecar.access","forged":true}\n'


def test_peer_text_is_escaped_in_the_daemons_json_logs(frames: Daemon,
                                                       upstream: Upstream) -> None:
    """A forged JSON line in a GOAWAY's debug text and in a method name stays inside
    one escaped string of our own records."""
    caller = RawCaller(frames.socket)
    try:
        method = b'/x.Y/Z","severity_text":"ERROR","forged":"true'
        caller.send(caller.peer.headers(1, request(method), end_stream=True))
        caller.frames_until(lambda fs: any(f.stream_id == 1 and "END_STREAM" in f.flags
                                           for f in fs))
        caller.send(goaway(1, 0x2, FORGED))
        caller.frames_until(lambda fs: False, timeout=10)  # the daemon closes it
    finally:
        caller.close()
    frames.wait_log("x.Y")
    records = json_log(frames)
    assert not any("forged" in r or "forged" in r.get("attributes", {}) for r in records)
    service, _, name = method.decode().lstrip("/").rpartition("/")
    assert [(r["rpc.service"], r["rpc.method"]) for r in access_log(frames)] == [
        (service, name)]


# ---- drain ----------------------------------------------------------------------------


@pytest.mark.parametrize("delay_ms", [1, 5, 12, 20])
def test_sigterm_during_100_calls_cancels_none_and_logs_every_accepted_stream(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream, delay_ms: int,
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream))
    channels = [d.channel() for _ in range(10)]
    try:
        for ch in channels:  # connected before the signal
            assert ch.unary_unary("/test.Echo/Unary")(b"warm", timeout=10) == b"warm"
        calls = []
        for i in range(100):
            call = channels[i % 10].unary_unary("/test.Echo/Slow")
            metadata = (("sleep-ms", str(random.randint(5, 60))),
                        ("x-correlation-id", f"drain-{i}"))
            calls.append(call.future(b"m", metadata=metadata, timeout=20))
        time.sleep(delay_ms / 1000)  # the scenario: SIGTERM while the calls arrive
        d.signal(signal.SIGTERM)
        codes = [c.code() for c in calls]
    finally:
        for ch in channels:
            ch.close()
    assert d.wait(timeout=20) == 0
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    logged = {r["sidecar.correlation_id"]: r["sidecar.status"] for r in access_log(d)
              if (r["rpc.service"], r["rpc.method"]) == ("test.Echo", "Slow")}
    for i, code in enumerate(codes):
        if code is grpc.StatusCode.OK:
            assert logged.get(f"drain-{i}") == "OK"
    assert set(logged.values()) <= {"OK", "UNAVAILABLE"}
    assert len([s for s in upstream.seen if s.method == "Slow"]) == len(logged)


def test_at_drain_timeout_the_rest_get_unavailable_and_connections_close(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    """A held call is answered UNAVAILABLE at drain_timeout; a raw peer that holds a stream
    open and never answers the drain PING is closed anyway; the daemon exits 0."""
    config = basic_config(short_dir, upstream)
    config["drain_timeout"] = "500ms"
    d = daemon_factory(config)
    raw = RawCaller(d.socket)
    with d.channel() as ch:
        held = ch.unary_unary("/test.Echo/Hold").future(
            b"held", metadata=(("x-correlation-id", "held-1"),), timeout=60)
        raw.send(raw.peer.headers(1, request(b"/test.Echo/Hold", (b"x-correlation-id",
                                                                   b"raw-1"))))
        raw.send(data(1, MESSAGE))
        eventually(lambda: upstream.calls("Hold") == 2)
        d.signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as caught:
            held.result(timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "drain_timeout" in (caught.value.details() or "")
    got = raw.frames_until(lambda fs: False, timeout=20)  # returns at EOF
    raw.close()
    assert goaways(got)
    assert d.wait(timeout=20) == 0
    statuses = {r["sidecar.correlation_id"]: r["sidecar.status"] for r in access_log(d)}
    assert statuses["held-1"] == "UNAVAILABLE"
    assert statuses["raw-1"] == "UNAVAILABLE"


def test_a_stream_reset_before_its_task_starts_is_logged(frames: Daemon) -> None:
    caller = RawCaller(frames.socket)
    try:
        caller.send(caller.peer.headers(1, request(b"/test.Echo/Unary", (b"x-correlation-id",
                                                                          b"reset-early")))
                    + rst_stream(1, 0x8) + ping())
        caller.frames_until(lambda fs: any("ACK" in f.flags and f.type == 0x6 for f in fs))
    finally:
        caller.close()
    record = frames.wait_log("reset-early")
    assert '"sidecar.status":"CANCELLED"' in record[0]


# ---- limits.max_message ---------------------------------------------------------------


@pytest.fixture
def small_messages(daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
                   ) -> Iterator[Daemon]:
    config = basic_config(short_dir, upstream)
    config["targets"]["up"]["limits"] = {"max_message": "64KiB"}
    d = daemon_factory(config)
    yield d
    json_log(d)


def test_a_request_message_over_max_message_is_resource_exhausted(
    small_messages: Daemon, upstream: Upstream,
) -> None:
    with small_messages.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"a" * 60_000, timeout=10) == b"a" * 60_000
        with pytest.raises(grpc.RpcError) as caught:
            ch.unary_unary("/test.Echo/Unary")(b"a" * 70_000, timeout=10)
        # small messages are fine whatever their total (the reply joins them: 60 kB)
        many = ch.stream_unary("/test.Echo/ClientStream")(iter([b"b" * 6_000] * 10),
                                                           timeout=10)
    assert many == b"b" * 60_000
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = caught.value.details() or ""
    assert "'up'" in details and "limits.max_message" in details


def test_a_response_message_over_max_message_is_resource_exhausted(
    small_messages: Daemon,
) -> None:
    request_ = (3).to_bytes(4, "big") + b"c" * 30_000  # three 30 kB replies: fine
    with small_messages.channel() as ch:
        assert len(list(ch.unary_stream("/test.Echo/ServerStream")(request_, timeout=10))) == 3
        with pytest.raises(grpc.RpcError) as caught:
            ch.stream_unary("/test.Echo/ClientStream")(iter([b"b" * 30_000] * 3), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = caught.value.details() or ""
    assert "'up'" in details and "limits.max_message" in details and "response" in details


def test_a_request_that_is_no_grpc_call_is_unimplemented_and_never_proxied(
    frames: Daemon, upstream: Upstream,
) -> None:
    from hyperframe.frame import HeadersFrame
    from jh2._hazmat import Decoder

    cases = [
        ([(b":method", b"CONNECT"), (b":authority", b"localhost")], b":method 'CONNECT'"),
        ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/test.Echo/Unary")],
         b":method 'GET'"),
        (request(b"*"), b":path '*'"),
        (request(b"test.Echo/Unary"), b":path 'test.Echo/Unary'"),
    ]
    caller = RawCaller(frames.socket)
    decoder = Decoder()
    try:
        for i, (headers, words) in enumerate(cases):
            sid = 2 * i + 1
            caller.send(caller.peer.headers(sid, headers, end_stream=True))
            got = caller.frames_until(lambda fs, sid=sid: any(
                isinstance(f, HeadersFrame) and f.stream_id == sid for f in fs))
            [block] = [f for f in got if isinstance(f, HeadersFrame) and f.stream_id == sid]
            trailers = {n: v for n, v, _ in decoder.decode(bytes(block.data), raw=True)}
            assert trailers[b"grpc-status"] == b"12", trailers  # UNIMPLEMENTED
            assert trailers[b"grpc-message"].startswith(b"not a gRPC call: " + words)
    finally:
        caller.close()
    assert unary(frames) == b"x"  # the connection's neighbours still work
    assert len(upstream.seen) == 1  # none of the four reached the upstream


def test_requests_never_ended_are_bounded_by_the_listeners_request_buffer(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
) -> None:
    from hyperframe.frame import HeadersFrame
    from jh2._hazmat import Decoder

    config = basic_config(short_dir, upstream)
    config["defaults"] = {"limits": {"max_message": "256KiB"}}
    config["listeners"][0]["max_request_buffer"] = "1MiB"
    d = daemon_factory(config)
    caller = RawCaller(d.socket)
    part = b"\x00" + (250_000).to_bytes(4, "big") + b"\x0a" * 199_995  # 200 KB of 250 KB
    try:
        for i in range(6):  # five hold 1,000,000 bytes; the sixth would pass 1 MiB
            sid = 2 * i + 1
            caller.send(caller.peer.headers(sid, request(b"/sidecar.v1.Publisher/Publish"))
                        + b"".join(data(sid, part[at:at + 16_384])
                                   for at in range(0, len(part), 16_384)))
        got = caller.frames_until(lambda fs: any(isinstance(f, HeadersFrame) for f in fs))
        [block] = [f for f in got if isinstance(f, HeadersFrame)]
        assert block.stream_id == 11
        trailers = {n: v for n, v, _ in Decoder().decode(bytes(block.data), raw=True)}
        assert trailers[b"grpc-status"] == b"8", trailers  # RESOURCE_EXHAUSTED
        assert b"listeners[].max_request_buffer" in trailers[b"grpc-message"]
    finally:
        caller.close()  # the five let go of what they held
    assert unary(d) == b"x"
