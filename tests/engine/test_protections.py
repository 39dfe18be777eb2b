"""Each EngineLimits protection against a hostile peer, with a fake clock where time matters."""

from __future__ import annotations

import pytest

from sidecar.engine.connection import H2Connection
from sidecar.engine.events import RequestReceived, StreamReset
from sidecar.engine.frames import ErrorCode, SettingId
from sidecar.engine.limits import EngineLimits
from sidecar.engine.ratelimit import TokenBucket
from tests.engine.wire import (
    REQUEST,
    FakeClock,
    Peer,
    connection_error,
    continuation,
    data,
    of_type,
    open_request,
    ping,
    raw_frame,
    rst_stream,
    sent,
    server,
    settings,
    stream_error,
)

# -- header list size: refused before buffering -------------------------------------------


def test_continuation_flood_is_refused_as_soon_as_the_block_passes_the_limit() -> None:
    conn = server(EngineLimits(max_header_list_size=16_384))
    assert conn.receive(raw_frame(0x1, 0, 1, b"\x82" * 16_000)) == []
    events = conn.receive(continuation(1, b"\x82" * 16_000, end_headers=False))
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM
    assert conn._block_parts == []  # nothing of the block is kept


def test_sixteen_mib_of_continuation_is_never_buffered() -> None:
    conn = server()
    fragment = continuation(1, b"\x82" * 16_384, end_headers=False)
    events = conn.receive(raw_frame(0x1, 0, 1, b"\x82"))
    fed = 0
    while not events and fed < 16 * 1024 * 1024:
        events = conn.receive(fragment)
        fed += len(fragment)
    assert fed <= 2 * len(fragment)
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_single_headers_frame_larger_than_the_limit_is_refused() -> None:
    limits = EngineLimits(max_header_list_size=1_000)
    conn = server(limits)
    events = conn.receive(raw_frame(0x1, 0x4, 1, b"\x82" * 1_001))
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_header_block_at_the_limit_is_decoded() -> None:
    conn, peer = server(EngineLimits(max_header_list_size=200)), Peer()
    headers = [*REQUEST, (b"x-pad", b"p" * 40)]
    block = peer.block(headers)
    assert len(block) <= 200
    assert conn.receive(raw_frame(0x1, 0x4, 1, block)) == [RequestReceived(1, headers, False)]


def test_small_block_decoding_to_a_huge_list_is_enhance_your_calm() -> None:
    conn, peer = server(EngineLimits(max_header_list_size=16_384)), Peer()
    big = [(b"x-big", b"v" * 3_000)]
    assert of_type(conn.receive(raw_frame(0x1, 0x5, 1, peer.block(REQUEST + big))), RequestReceived)
    bomb = peer.block(REQUEST + big * 20)
    assert len(bomb) < 100  # one-byte references to a 3 kB table entry
    events = conn.receive(raw_frame(0x1, 0x5, 3, bomb))
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_we_advertise_our_header_list_size() -> None:
    conn = H2Connection(client=False, settings=EngineLimits(max_header_list_size=4_096))
    conn.initiate()
    assert sent(conn)[0].settings[SettingId.MAX_HEADER_LIST_SIZE] == 4_096


# -- concurrent streams --------------------------------------------------------------------


def test_stream_past_max_concurrent_streams_is_refused() -> None:
    conn, peer = server(EngineLimits(max_concurrent_streams=2)), Peer()
    open_request(conn, peer, stream_id=1)
    open_request(conn, peer, stream_id=3)
    events = conn.receive(peer.headers(5))
    assert stream_error(conn, events) == (5, ErrorCode.REFUSED_STREAM)
    assert conn.open_inbound_streams == 2


def test_a_closed_stream_frees_its_slot() -> None:
    conn, peer = server(EngineLimits(max_concurrent_streams=1)), Peer()
    open_request(conn, peer, stream_id=1, end=True)
    conn.send_headers(1, [(b":status", b"200")], end_stream=True)
    assert of_type(conn.receive(peer.headers(3)), RequestReceived)


def test_half_closed_streams_still_count() -> None:
    conn, peer = server(EngineLimits(max_concurrent_streams=1)), Peer()
    open_request(conn, peer, stream_id=1, end=True)
    events = conn.receive(peer.headers(3))
    assert stream_error(conn, events) == (3, ErrorCode.REFUSED_STREAM)


# -- rapid reset ---------------------------------------------------------------------------


def rapid_reset(conn: H2Connection, peer: Peer, first: int, count: int) -> list[object]:
    events: list[object] = []
    for stream_id in range(first, first + 2 * count, 2):
        events += conn.receive(peer.headers(stream_id) + rst_stream(stream_id))
    return events


def test_rapid_reset_past_the_rate_is_enhance_your_calm() -> None:
    clock = FakeClock()
    conn, peer = server(EngineLimits(max_resets_per_second=10), clock), Peer()
    events = rapid_reset(conn, peer, 1, 10)
    assert len(of_type(events, StreamReset)) == 10
    events = rapid_reset(conn, peer, 21, 1)
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_resets_at_the_rate_are_allowed_for_ever() -> None:
    clock = FakeClock()
    conn, peer = server(EngineLimits(max_resets_per_second=10), clock), Peer()
    stream_id = 1
    for _ in range(50):
        rapid_reset(conn, peer, stream_id, 5)
        stream_id += 10
        clock.now += 0.5
    assert not conn.closed


def test_reset_budget_refills_with_time() -> None:
    clock = FakeClock()
    conn, peer = server(EngineLimits(max_resets_per_second=10), clock), Peer()
    rapid_reset(conn, peer, 1, 10)
    clock.now += 0.5
    rapid_reset(conn, peer, 21, 5)
    assert not conn.closed
    events = rapid_reset(conn, peer, 31, 1)
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_streams_we_refuse_count_as_resets() -> None:
    clock = FakeClock()
    limits = EngineLimits(max_concurrent_streams=0, max_resets_per_second=5)
    conn, peer = server(limits, clock), Peer()
    for stream_id in range(1, 11, 2):
        conn.receive(peer.headers(stream_id))
    events = conn.receive(peer.headers(11))
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_token_bucket_spends_and_refills() -> None:
    bucket = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.0)
    assert not bucket.take(0.4)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_token_bucket_saves_no_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=3.0, now=0.0)
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]


def test_token_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.take(11.0)


# -- control frames queued for a peer that does not read -----------------------------------


def test_ping_flood_without_reading_is_enhance_your_calm() -> None:
    conn = server(EngineLimits(max_pending_control_frames=100))
    events = conn.receive(ping() * 100)
    assert events == []
    assert conn.pending_control_frames == 100
    events = conn.receive(ping())
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_settings_flood_without_reading_is_enhance_your_calm() -> None:
    conn = server(EngineLimits(max_pending_control_frames=10))
    events = conn.receive(settings() * 11)
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_taking_the_output_resets_the_control_frame_count() -> None:
    conn = server(EngineLimits(max_pending_control_frames=10))
    for _ in range(20):
        conn.receive(ping() * 10)
        conn.data_to_send()
    assert not conn.closed
    assert conn.pending_control_frames == 0


def test_our_own_frames_do_not_count_as_control_flood() -> None:
    conn = server(EngineLimits(max_pending_control_frames=1))
    for _ in range(10):
        conn.ping(b"12345678")
    assert conn.pending_control_frames == 0


# -- SETTINGS entries and empty frames -----------------------------------------------------


def test_settings_with_too_many_entries_is_enhance_your_calm() -> None:
    conn = server(EngineLimits(max_settings_entries=8))
    payload = b"".join((0x99).to_bytes(2, "big") + i.to_bytes(4, "big") for i in range(9))
    events = conn.receive(raw_frame(0x4, 0, 0, payload))
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_empty_data_flood_is_enhance_your_calm() -> None:
    conn, peer = server(EngineLimits(max_empty_frames=10)), Peer()
    open_request(conn, peer)
    assert len(conn.receive(data(1, b"") * 10)) == 10
    events = conn.receive(data(1, b""))
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


def test_empty_data_between_real_data_is_allowed() -> None:
    conn, peer = server(EngineLimits(max_empty_frames=2)), Peer()
    open_request(conn, peer)
    for _ in range(10):
        conn.receive(data(1, b"") + data(1, b"") + data(1, b"x"))
    assert not conn.closed


def test_empty_data_with_end_stream_is_not_counted() -> None:
    conn, peer = server(EngineLimits(max_empty_frames=1)), Peer()
    for stream_id in range(1, 21, 2):
        conn.receive(peer.headers(stream_id) + data(stream_id, b"", end_stream=True))
    assert not conn.closed


def test_empty_continuation_flood_is_enhance_your_calm() -> None:
    conn = server(EngineLimits(max_empty_frames=10))
    events = conn.receive(raw_frame(0x1, 0, 1, b"\x82"))
    events += conn.receive(continuation(1, b"", end_headers=False) * 11)
    assert connection_error(conn, events) == ErrorCode.ENHANCE_YOUR_CALM


# -- memory stays bounded ------------------------------------------------------------------


def test_closed_streams_are_forgotten() -> None:
    conn, peer = server(), Peer()
    for stream_id in range(1, 2_001, 2):
        conn.receive(peer.headers(stream_id, end_stream=True))
        conn.send_headers(stream_id, [(b":status", b"200")], end_stream=True)
        conn.data_to_send()
    assert conn._streams == {}


def test_reset_streams_are_remembered_only_up_to_the_limit() -> None:
    conn, peer = server(EngineLimits(closed_stream_memory=8, max_resets_per_second=1e9)), Peer()
    for stream_id in range(1, 201, 2):
        open_request(conn, peer, stream_id)
        conn.reset_stream(stream_id)
    conn.data_to_send()
    assert len(conn._quiet) == 8
    assert conn.receive(data(199)) == []  # remembered: dropped quietly
    events = conn.receive(data(1))  # forgotten: answered as a closed stream
    assert stream_error(conn, events) == (1, ErrorCode.STREAM_CLOSED)


def test_encoder_table_is_capped_whatever_the_peer_allows() -> None:
    conn = H2Connection(client=True, settings=EngineLimits(max_encoder_table_size=256))
    conn.initiate()
    conn.receive(settings({SettingId.HEADER_TABLE_SIZE: 1 << 30}))
    assert conn._codec._encoder.header_table_size == 256


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"initial_window": 2**31},
        {"connection_window": 1_000},
        {"max_frame_size": 1_000},
        {"max_frame_size": 2**24},
        {"max_resets_per_second": 0},
        {"max_header_list_size": 0},
        {"max_pending_control_frames": 0},
        {"max_settings_entries": 5},
    ],
    ids=lambda changes: next(iter(changes)),
)
def test_limits_out_of_range_are_refused_once(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EngineLimits(**changes)  # type: ignore[arg-type]


def test_limits_are_frozen() -> None:
    limits = EngineLimits()
    with pytest.raises(AttributeError):
        limits.initial_window = 1  # type: ignore[misc]


def test_default_limits() -> None:
    limits = EngineLimits()
    assert (limits.max_header_list_size, limits.max_concurrent_streams) == (16_384, 256)
    assert (limits.initial_window, limits.connection_window) == (4 << 20, 16 << 20)
    assert limits.max_frame_size == 16_384


def test_the_reset_clock_is_read_only_for_resets() -> None:
    reads = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    conn = H2Connection(client=False, clock=clock)
    conn.initiate()
    conn.receive(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings() + Peer().headers(1))
    assert len(reads) == 1  # the bucket's start
    conn.receive(rst_stream(1))
    assert len(reads) == 2
