"""Property: whatever a peer sends, receive() only returns events; a connection error is one
ConnectionTerminated, last, with its GOAWAY queued; after it receive() returns nothing."""

from __future__ import annotations

import struct

import pytest
from hyperframe.frame import GoAwayFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jh2._hazmat import Encoder

from sidecar.engine.connection import H2Connection
from sidecar.engine.events import ConnectionTerminated, DataReceived, Event
from sidecar.engine.frames import PREFACE
from sidecar.engine.limits import EngineLimits
from tests.engine.wire import REQUEST, RESPONSE, TRAILERS, FakeClock, parse
from tests.engine.wire import settings as settings_frame

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Small limits, so that random input reaches them.
LIMITS = EngineLimits(
    max_header_list_size=2_048, max_concurrent_streams=4, max_resets_per_second=20,
    max_pending_control_frames=20, initial_window=4_096, connection_window=65_535,
    max_empty_frames=5, closed_stream_memory=4,
)

stream_ids = st.one_of(
    st.sampled_from([1, 1, 3, 3, 5, 7, 0, 2, 4, 9, 2**31 - 1]), st.integers(0, 2**32 - 1)
)
header_lists = st.sampled_from(
    [REQUEST, REQUEST, RESPONSE, RESPONSE, TRAILERS, [(b":status", b"100")], []]
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One frame, usually well-formed for its type (so that deeper states are reached), now
    and then with random flags, a random payload, or a declared length that is wrong."""
    frame_type = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 0xFA]))
    stream_id = draw(stream_ids)
    if frame_type in (4, 6, 7) or (frame_type == 8 and draw(st.booleans())):
        stream_id = 0 if draw(st.integers(0, 9)) else stream_id
    flags = draw(st.sampled_from([0, 0x1, 0x4, 0x5, 0x5, 0x8, 0x9, 0x20, 0x2D]))
    if frame_type == 1 and draw(st.integers(0, 4)):
        flags |= 0x4  # mostly a whole header block in one frame
    if frame_type == 1 or frame_type == 9:
        block = bytes(Encoder().encode([(n, v, False) for n, v in draw(header_lists)]))
        if draw(st.integers(0, 9)) == 0:
            block = block[: draw(st.integers(0, len(block)))]
        if frame_type == 1 and flags & 0x20:
            block = struct.pack(">LB", draw(stream_ids), 16) + block
        if flags & 0x8:
            pad = draw(st.integers(0, 4))
            block = bytes([pad]) + block + b"\x00" * pad
        payload = block
    elif frame_type == 0:
        payload = draw(st.binary(max_size=300))
        if flags & 0x8:
            payload = bytes([draw(st.integers(0, len(payload)))]) + payload
    elif frame_type == 4:
        entry = st.tuples(st.integers(0, 9), st.integers(0, 2**32 - 1))
        payload = b"".join(struct.pack(">HL", i, v) for i, v in draw(st.lists(entry, max_size=4)))
        flags &= ~0x1 if draw(st.integers(0, 4)) else 0xFF
    elif frame_type in (3, 8):
        payload = struct.pack(">L", draw(st.integers(0, 2**32 - 1)))
    elif frame_type == 2:
        payload = struct.pack(">LB", draw(stream_ids), 16)
    elif frame_type == 6:
        payload = draw(st.binary(min_size=8, max_size=8))
    elif frame_type == 7:
        payload = struct.pack(">LL", draw(stream_ids), draw(st.integers(0, 20))) + b"debug"
    else:
        payload = draw(st.binary(max_size=48))
    if draw(st.integers(0, 9)) == 0:  # sometimes anything at all
        flags = draw(st.integers(0, 255))
        payload = draw(st.binary(max_size=48))
    length = len(payload)
    declared = length
    if draw(st.integers(0, 14)) == 0:
        declared = draw(st.sampled_from([max(0, length - 1), length + 3, 16_385, 2**24 - 1]))
    header = struct.pack(">HBBBL", declared >> 8, declared & 0xFF, frame_type, flags, stream_id)
    return header + payload


@st.composite
def conversations(draw: st.DrawFn, client: bool) -> bytes:
    """A valid peer conversation (requests or responses with data and trailers, one HPACK
    state), then random frames inserted and random bytes flipped."""
    encoder = Encoder()
    wire: list[bytes] = []
    for stream_id in (1, 3, 5):
        headers = RESPONSE if client else REQUEST
        for block, end in ((encoder.encode([(n, v, False) for n, v in headers]), False),
                           (None, False), (encoder.encode([(b"grpc-status", b"0", False)]), True)):
            if block is None:
                body = draw(st.binary(max_size=64))
                wire.append(struct.pack(">HBBBL", 0, len(body), 0, 0, stream_id) + body)
            else:
                flags = 0x4 | (0x1 if end else 0)
                wire.append(struct.pack(">HBBBL", 0, len(block), 1, flags, stream_id) + block)
    for _ in range(draw(st.integers(0, 4))):
        wire.insert(draw(st.integers(0, len(wire))), draw(frames()))
    data = bytearray(b"".join(wire))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def handshake(client: bool) -> H2Connection:
    conn = H2Connection(client=client, settings=LIMITS, clock=FakeClock())
    conn.initiate()
    if client:
        conn.receive(settings_frame())
        for _ in range(3):  # streams of ours for the peer to answer
            conn.send_headers(conn.next_stream_id(), REQUEST)
    else:
        conn.receive(PREFACE + settings_frame())
    conn.data_to_send()
    return conn


def feed(conn: H2Connection, chunks: list[bytes]) -> None:
    terminated = False
    for chunk in chunks:
        events = conn.receive(chunk)
        if terminated:
            assert events == []
            continue
        assert all(isinstance(event, Event) for event in events)
        ends = [e for e in events if isinstance(e, ConnectionTerminated)]
        for event in events:
            if isinstance(event, DataReceived) and not ends:
                conn.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
        sent = parse(conn.data_to_send())  # what we send is always well-formed
        if ends:
            assert len(ends) == 1 and events[-1] is ends[0]
            assert isinstance(sent[-1], GoAwayFrame)
            assert sent[-1].error_code == ends[0].error_code
            assert conn.closed
            terminated = True
    if terminated:
        assert conn.receive(PREFACE + b"\x00" * 64) == []


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    start = 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=5))
def test_random_bytes_after_the_preface(
    client: bool, data: bytes, cuts: list[int], capfd: pytest.CaptureFixture[str]
) -> None:
    feed(handshake(client), chunked(data, cuts))
    assert "panicked" not in capfd.readouterr().err


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@FUZZ
@given(
    sequence=st.lists(frames(), min_size=1, max_size=25),
    cuts=st.lists(st.integers(0, 2**16), max_size=8),
)
def test_random_frames(
    client: bool, sequence: list[bytes], cuts: list[int], capfd: pytest.CaptureFixture[str]
) -> None:
    data = b"".join(sequence)
    feed(handshake(client), chunked(data, cuts))
    assert "panicked" not in capfd.readouterr().err


@pytest.mark.parametrize("client", [False, True], ids=["server", "client"])
@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(0, 2**16), max_size=8))
def test_mutated_conversations(
    client: bool, data: st.DataObject, cuts: list[int], capfd: pytest.CaptureFixture[str]
) -> None:
    wire = data.draw(conversations(client))
    feed(handshake(client), chunked(wire, cuts))
    assert "panicked" not in capfd.readouterr().err


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_instead_of_the_preface(data: bytes) -> None:
    conn = H2Connection(client=False, settings=LIMITS)
    conn.initiate()
    conn.data_to_send()
    feed(conn, [data, PREFACE, settings_frame()])


@FUZZ
@given(block=st.binary(max_size=80))
def test_random_header_blocks_never_reach_a_rust_panic(
    block: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    conn = handshake(client=False)
    header = struct.pack(">HBBBL", len(block) >> 8, len(block) & 0xFF, 1, 0x5, 1)
    feed(conn, [header + block])
    assert "panicked" not in capfd.readouterr().err
