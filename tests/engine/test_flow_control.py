"""Flow control both ways: windows, WINDOW_UPDATE, acknowledgement batching, their errors."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    DataFrame,
    WindowUpdateFrame,
)

from sidecar.engine.errors import StreamStateError
from sidecar.engine.events import (
    WindowUpdated,
)
from sidecar.engine.frames import ErrorCode, SettingId
from sidecar.engine.limits import EngineLimits
from tests.engine.wire import (
    RESPONSE,
    SMALL,
    Peer,
    client,
    connection_error,
    data,
    open_call,
    open_request,
    raw_frame,
    rst_stream,
    sent,
    server,
    settings,
    stream_error,
    window_update,
)

# -- flow control --------------------------------------------------------------------------


def test_send_data_is_limited_by_the_stream_window() -> None:
    conn = client()
    conn.receive(window_update(0, 1_000_000))
    stream_id = open_call(conn, end=False)
    assert conn.send_data(stream_id, b"x" * 100_000) == 65_535
    assert conn.remote_window(stream_id) == 0


def test_send_data_is_limited_by_the_connection_window() -> None:
    conn = client()
    first, second = open_call(conn, end=False), open_call(conn, end=False)
    assert conn.send_data(first, b"x" * 40_000) == 40_000
    assert conn.send_data(second, b"x" * 40_000) == 25_535
    assert conn.remote_window(0) == 0


def test_send_data_on_an_exhausted_window_takes_nothing_and_sends_nothing() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    assert conn.send_data(stream_id, b"x" * 65_535) == 65_535
    conn.data_to_send()
    assert conn.send_data(stream_id, b"y", end_stream=True) == 0
    assert conn.data_to_send() == b""


def test_end_stream_is_sent_only_with_the_last_byte() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    assert conn.send_data(stream_id, b"x" * 70_000, end_stream=True) == 65_535
    assert all("END_STREAM" not in f.flags for f in sent(conn))
    conn.receive(window_update(0, 10_000) + window_update(stream_id, 10_000))
    assert conn.send_data(stream_id, b"x" * 4_465, end_stream=True) == 4_465
    assert "END_STREAM" in sent(conn)[-1].flags


def test_empty_data_with_end_stream_is_sent_even_without_window() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    conn.send_data(stream_id, b"x" * 65_535)
    conn.data_to_send()
    assert conn.send_data(stream_id, b"", end_stream=True) == 0
    (frame,) = sent(conn)
    assert isinstance(frame, DataFrame) and "END_STREAM" in frame.flags


def test_connection_window_update_reopens_sending() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    conn.send_data(stream_id, b"x" * 65_535)
    assert conn.receive(window_update(0, 100)) == [WindowUpdated(0)]
    assert conn.remote_window(0) == 100


def test_stream_window_update_reopens_sending() -> None:
    conn = client()
    conn.receive(window_update(0, 1_000_000))
    stream_id = open_call(conn, end=False)
    conn.send_data(stream_id, b"x" * 65_535)
    assert conn.receive(window_update(stream_id, 10)) == [WindowUpdated(stream_id)]
    assert conn.send_data(stream_id, b"x" * 100) == 10


def test_initial_window_shrink_makes_an_open_stream_window_negative() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    conn.send_data(stream_id, b"x" * 60_000)
    conn.receive(settings({SettingId.INITIAL_WINDOW_SIZE: 1_000}))
    assert conn.remote_window(stream_id) == 1_000 - 60_000
    assert conn.send_data(stream_id, b"x") == 0


def test_initial_window_growth_enlarges_open_streams_and_says_so() -> None:
    conn = client()
    conn.receive(window_update(0, 1_000_000))
    stream_id = open_call(conn, end=False)
    events = conn.receive(settings({SettingId.INITIAL_WINDOW_SIZE: 100_000}))
    assert events[-1] == WindowUpdated(0)
    assert conn.remote_window(stream_id) == 100_000


def test_initial_window_growth_past_maximum_on_open_stream_is_flow_control_error() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    conn.receive(window_update(stream_id, 2**31 - 1 - 65_535))
    events = conn.receive(settings({SettingId.INITIAL_WINDOW_SIZE: 65_536}))
    assert connection_error(conn, events) == ErrorCode.FLOW_CONTROL_ERROR


def test_connection_window_update_of_zero_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(window_update(0, 0))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_stream_window_update_of_zero_is_a_stream_protocol_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(window_update(1, 0))
    assert stream_error(conn, events) == (1, ErrorCode.PROTOCOL_ERROR)


def test_connection_window_overflow_is_flow_control_error() -> None:
    conn = server()
    events = conn.receive(window_update(0, 2**31 - 1 - 65_535 + 1))
    assert connection_error(conn, events) == ErrorCode.FLOW_CONTROL_ERROR


def test_connection_window_up_to_the_maximum_is_accepted() -> None:
    conn = server()
    assert conn.receive(window_update(0, 2**31 - 1 - 65_535)) == [WindowUpdated(0)]
    assert conn.remote_window(0) == 2**31 - 1


def test_stream_window_overflow_is_a_stream_flow_control_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(window_update(1, 2**31 - 1 - 65_535 + 1))
    assert stream_error(conn, events) == (1, ErrorCode.FLOW_CONTROL_ERROR)


def test_window_update_not_four_bytes_is_frame_size_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x8, 0, 0, b"\x00\x00\x01"))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_window_update_on_idle_stream_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(window_update(1, 10))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_window_update_on_closed_stream_is_ignored() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer, end=True)
    conn.send_headers(1, RESPONSE, end_stream=True)
    conn.data_to_send()
    assert conn.receive(window_update(1, 10)) == []
    assert sent(conn) == []


def test_window_update_reserved_bit_is_ignored() -> None:
    conn = server()
    assert conn.receive(window_update(0, 0x80000000 | 5)) == [WindowUpdated(0)]


def test_data_exactly_filling_the_stream_window_is_accepted() -> None:
    conn, peer = server(SMALL), Peer()
    open_request(conn, peer)
    events = conn.receive(b"".join(data(1, b"x" * 16_384) for _ in range(3)))
    events += conn.receive(data(1, b"x" * (65_535 - 3 * 16_384)))
    assert sum(e.flow_controlled_length for e in events) == 65_535
    assert conn.local_window(1) == 0
    assert not conn.closed


def test_data_beyond_the_stream_window_is_flow_control_error() -> None:
    conn, peer = server(EngineLimits(initial_window=1_000)), Peer()
    open_request(conn, peer)
    events = conn.receive(data(1, b"x" * 1_001))
    assert connection_error(conn, events) == ErrorCode.FLOW_CONTROL_ERROR


def test_data_beyond_the_connection_window_is_flow_control_error() -> None:
    conn, peer = server(SMALL), Peer()
    open_request(conn, peer, stream_id=1)
    open_request(conn, peer, stream_id=3)
    conn.receive(data(1, b"x" * 16_384) + data(1, b"x" * 16_384) + data(1, b"x" * 16_384))
    events = conn.receive(data(3, b"x" * 16_384))
    assert connection_error(conn, events) == ErrorCode.FLOW_CONTROL_ERROR


def test_padding_counts_against_the_flow_control_window() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    before = conn.local_window(1)
    (event,) = conn.receive(data(1, b"abc", pad=10))
    assert bytes(event.data) == b"abc"
    assert event.flow_controlled_length == 3 + 10 + 1
    assert conn.local_window(1) == before - 14
    assert conn.local_window(0) == 16 * 1024 * 1024 - 14


def test_acknowledged_data_is_returned_in_batches_of_half_a_window() -> None:
    conn, peer = server(SMALL), Peer()
    open_request(conn, peer)
    conn.receive(data(1, b"x" * 16_384))
    conn.acknowledge_received_data(1, 16_384)
    assert sent(conn) == []  # a quarter of the window: not yet
    conn.receive(data(1, b"x" * 16_384))
    conn.acknowledge_received_data(1, 16_384)
    updates = sent(conn)
    assert {(f.stream_id, f.window_increment) for f in updates} == {(0, 32_768), (1, 32_768)}
    assert conn.local_window(1) == 65_535
    assert conn.local_window(0) == 65_535


def test_unacknowledged_data_is_never_returned() -> None:
    conn, peer = server(SMALL), Peer()
    open_request(conn, peer)
    conn.receive(data(1, b"x" * 16_384) + data(1, b"x" * 16_384) + data(1, b"x" * 16_384))
    assert not [f for f in sent(conn) if isinstance(f, WindowUpdateFrame)]
    assert conn.local_window(1) == 65_535 - 3 * 16_384


def test_no_stream_window_update_once_the_peer_has_ended_the_stream() -> None:
    conn, peer = server(SMALL), Peer()
    open_request(conn, peer)
    conn.receive(data(1, b"x" * 16_384) + data(1, b"x" * 16_384) + data(1, b"x" * 7_232, True))
    conn.acknowledge_received_data(1, 40_000)
    assert [(f.stream_id, f.window_increment) for f in sent(conn)] == [(0, 40_000)]


def test_acknowledging_more_than_received_is_refused() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    conn.receive(data(1, b"x" * 10))
    with pytest.raises(ValueError):
        conn.acknowledge_received_data(1, 11)


def test_acknowledging_after_the_stream_ended_still_returns_connection_window() -> None:
    conn, peer = server(SMALL), Peer()
    open_request(conn, peer)
    conn.receive(data(1, b"x" * 16_384) + data(1, b"x" * 16_384) + data(1, b"x" * 7_232))
    conn.receive(rst_stream(1))
    conn.acknowledge_received_data(1, 40_000)
    assert [(f.stream_id, f.window_increment) for f in sent(conn)] == [(0, 40_000)]


def test_data_on_a_reset_stream_is_credited_back_to_the_connection() -> None:
    conn, peer = server(SMALL), Peer()
    open_request(conn, peer)
    conn.reset_stream(1)
    conn.data_to_send()
    for _ in range(3):
        assert conn.receive(data(1, b"x" * 16_000)) == []
    assert [(f.stream_id, f.window_increment) for f in sent(conn)] == [(0, 48_000)]


def test_local_window_and_remote_window_of_a_new_stream() -> None:
    conn, peer = server(EngineLimits(initial_window=100_000)), Peer()
    conn.receive(settings({SettingId.INITIAL_WINDOW_SIZE: 5_000}))
    open_request(conn, peer)
    assert conn.local_window(1) == 100_000
    assert conn.remote_window(1) == 5_000
    assert conn.remote_window(0) == 65_535


def test_window_of_an_unknown_stream_is_refused() -> None:
    conn = server()
    with pytest.raises(StreamStateError):
        conn.remote_window(1)
    with pytest.raises(StreamStateError):
        conn.local_window(1)
