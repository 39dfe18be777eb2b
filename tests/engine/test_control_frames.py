"""SETTINGS, PRIORITY, RST_STREAM, PING and GOAWAY on receipt, and every error they raise."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from jh2._hazmat import Decoder

from sidecar.engine.errors import ConnectionClosedError, StreamLimitError, StreamStateError
from sidecar.engine.events import (
    DataReceived,
    GoAwayReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    StreamReset,
)
from sidecar.engine.frames import ErrorCode, SettingId
from tests.engine.wire import (
    REQUEST,
    RESPONSE,
    Peer,
    client,
    connection_error,
    data,
    goaway,
    open_call,
    open_request,
    ping,
    raw_frame,
    rst_stream,
    sent,
    server,
    settings,
    stream_error,
    window_update,
)

# -- SETTINGS ------------------------------------------------------------------------------


def test_settings_are_acknowledged_and_reported() -> None:
    conn = server()
    events = conn.receive(settings({SettingId.MAX_CONCURRENT_STREAMS: 5}))
    assert events == [RemoteSettingsChanged({SettingId.MAX_CONCURRENT_STREAMS: 5})]
    (ack,) = sent(conn)
    assert isinstance(ack, SettingsFrame) and "ACK" in ack.flags


def test_settings_ack_from_peer_produces_no_event() -> None:
    conn = server()
    assert conn.receive(settings(ack=True)) == []
    assert sent(conn) == []


def test_settings_ack_with_payload_is_frame_size_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x4, 0x1, 0, b"\x00\x03\x00\x00\x00\x01"))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_settings_length_not_multiple_of_six_is_frame_size_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x4, 0, 0, b"\x00\x03\x00\x00\x00"))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_settings_on_a_stream_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x4, 0, 1))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_enable_push_other_than_0_or_1_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(settings({SettingId.ENABLE_PUSH: 2}))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_client_refuses_enable_push_1_from_server() -> None:
    conn = client()
    events = conn.receive(settings({SettingId.ENABLE_PUSH: 1}))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_server_accepts_enable_push_1_from_client() -> None:
    conn = server()
    assert conn.receive(settings({SettingId.ENABLE_PUSH: 1})) == [
        RemoteSettingsChanged({SettingId.ENABLE_PUSH: 1})
    ]


def test_initial_window_size_above_maximum_is_flow_control_error() -> None:
    conn = server()
    events = conn.receive(settings({SettingId.INITIAL_WINDOW_SIZE: 2**31}))
    assert connection_error(conn, events) == ErrorCode.FLOW_CONTROL_ERROR


@pytest.mark.parametrize("value", [16_383, 2**24])
def test_max_frame_size_out_of_range_is_protocol_error(value: int) -> None:
    conn = server()
    events = conn.receive(settings({SettingId.MAX_FRAME_SIZE: value}))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_unknown_settings_are_ignored() -> None:
    conn = server()
    assert conn.receive(settings({0x99: 12345})) == [RemoteSettingsChanged({0x99: 12345})]
    assert not conn.closed


def test_peer_max_frame_size_splits_our_data_frames() -> None:
    conn = client()
    conn.receive(settings({SettingId.MAX_FRAME_SIZE: 20_000}))
    conn.receive(window_update(0, 100_000))
    conn.data_to_send()
    stream_id = open_call(conn, end=False)
    conn.receive(window_update(stream_id, 100_000))
    assert conn.send_data(stream_id, b"x" * 50_000) == 50_000
    frames = sent(conn)
    assert [f.body_len for f in frames] == [20_000, 20_000, 10_000]


def test_default_max_frame_size_splits_our_header_blocks() -> None:
    conn = client()
    stream_id = conn.next_stream_id()
    conn.send_headers(stream_id, [*REQUEST, (b"x-big", b"v" * 20_000)])
    frames = sent(conn)
    assert [type(f) for f in frames] == [HeadersFrame, ContinuationFrame]
    assert frames[0].body_len == 16_384
    decoded = Decoder(max_header_list_size=1 << 20).decode(
        b"".join(bytes(f.data) for f in frames), raw=True
    )
    assert (b"x-big", b"v" * 20_000, False) in decoded


def test_peer_header_table_size_is_applied_to_our_encoder() -> None:
    conn = client()
    conn.receive(settings({SettingId.HEADER_TABLE_SIZE: 0}))
    conn.data_to_send()
    stream_id = conn.next_stream_id()
    conn.send_headers(stream_id, REQUEST)
    (frame,) = sent(conn)
    assert frame.data[0] & 0xE0 == 0x20  # dynamic table size update (RFC 7541 6.3)


def test_peer_max_concurrent_streams_limits_new_client_streams() -> None:
    conn = client()
    conn.receive(settings({SettingId.MAX_CONCURRENT_STREAMS: 1}))
    open_call(conn)
    assert conn.open_outbound_streams == 1
    with pytest.raises(StreamLimitError):
        conn.send_headers(conn.next_stream_id(), REQUEST)


def test_peer_max_header_list_size_is_exposed() -> None:
    conn = client()
    assert conn.peer_max_header_list_size is None
    conn.receive(settings({SettingId.MAX_HEADER_LIST_SIZE: 4096}))
    assert conn.peer_max_header_list_size == 4096


# -- PRIORITY ------------------------------------------------------------------------------


def priority(stream_id: int, depends_on: int = 0, length: int = 5) -> bytes:
    payload = depends_on.to_bytes(4, "big") + b"\x10"
    return raw_frame(0x2, 0, stream_id, (payload * 2)[:length])


def test_priority_frame_is_ignored() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    assert conn.receive(priority(1, depends_on=3)) == []
    assert sent(conn) == []


def test_priority_on_an_idle_stream_does_not_open_it() -> None:
    conn, peer = server(), Peer()
    assert conn.receive(priority(9)) == []
    open_request(conn, peer, stream_id=1)
    assert not conn.closed


def test_priority_on_stream_zero_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(priority(0))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("length", [4, 6])
def test_priority_not_five_bytes_is_a_stream_frame_size_error(length: int) -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(priority(1, length=length))
    assert stream_error(conn, events) == (1, ErrorCode.FRAME_SIZE_ERROR)


def test_bad_priority_on_an_idle_stream_is_a_connection_error() -> None:
    conn = server()
    events = conn.receive(priority(9, length=4))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_priority_depending_on_itself_is_a_stream_protocol_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(priority(1, depends_on=1))
    assert stream_error(conn, events) == (1, ErrorCode.PROTOCOL_ERROR)


# -- RST_STREAM ----------------------------------------------------------------------------


def test_rst_stream_resets_the_stream_remotely() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    assert conn.receive(rst_stream(1, ErrorCode.CANCEL)) == [
        StreamReset(1, ErrorCode.CANCEL, True)
    ]
    assert conn.open_inbound_streams == 0
    with pytest.raises(StreamStateError):
        conn.send_headers(1, RESPONSE)


def test_rst_stream_with_an_unknown_code_is_reported_as_is() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    assert conn.receive(rst_stream(1, 0xABCDEF)) == [StreamReset(1, 0xABCDEF, True)]


def test_rst_stream_on_stream_zero_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x3, 0, 0, b"\x00\x00\x00\x08"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_rst_stream_not_four_bytes_is_frame_size_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(raw_frame(0x3, 0, 1, b"\x00\x00\x08"))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_rst_stream_on_an_idle_stream_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(rst_stream(1))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_rst_stream_on_a_closed_stream_is_ignored() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    conn.receive(rst_stream(1))
    assert conn.receive(rst_stream(1)) == []
    assert sent(conn) == []


def test_reset_stream_sends_rst_stream_and_forgets_the_stream() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    conn.reset_stream(1, ErrorCode.REFUSED_STREAM)
    (frame,) = sent(conn)
    assert isinstance(frame, RstStreamFrame)
    assert (frame.stream_id, frame.error_code) == (1, ErrorCode.REFUSED_STREAM)
    assert conn.open_inbound_streams == 0


def test_reset_stream_of_a_closed_stream_sends_nothing() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    conn.receive(rst_stream(1))
    conn.reset_stream(1)
    assert sent(conn) == []


def test_reset_stream_of_an_idle_stream_is_refused() -> None:
    with pytest.raises(StreamStateError):
        server().reset_stream(1)


# -- PING ----------------------------------------------------------------------------------


def test_ping_is_acknowledged_with_its_payload() -> None:
    conn = server()
    assert conn.receive(ping(b"abcdefgh")) == []
    (frame,) = sent(conn)
    assert isinstance(frame, PingFrame)
    assert ("ACK" in frame.flags, frame.opaque_data) == (True, b"abcdefgh")


def test_ping_ack_is_reported() -> None:
    conn = server()
    assert conn.receive(ping(b"abcdefgh", ack=True)) == [PingAckReceived(b"abcdefgh")]
    assert sent(conn) == []


def test_ping_not_eight_bytes_is_frame_size_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x6, 0, 0, b"1234567"))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_ping_on_a_stream_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x6, 0, 1, b"12345678"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_ping_sends_a_ping() -> None:
    conn = server()
    conn.ping(b"87654321")
    (frame,) = sent(conn)
    assert ("ACK" in frame.flags, frame.opaque_data) == (False, b"87654321")


def test_ping_needs_eight_bytes() -> None:
    with pytest.raises(ValueError):
        server().ping(b"short")


# -- GOAWAY --------------------------------------------------------------------------------


def test_goaway_is_reported_with_its_debug_data() -> None:
    conn = client()
    events = conn.receive(goaway(0, ErrorCode.ENHANCE_YOUR_CALM, b"\x1b[31m{\"forged\": 1}"))
    assert events == [GoAwayReceived(0, ErrorCode.ENHANCE_YOUR_CALM, b"\x1b[31m{\"forged\": 1}")]
    assert conn.goaway_received


def test_goaway_refuses_our_streams_above_its_last_stream_id() -> None:
    conn = client()
    first, second, third = (open_call(conn) for _ in range(3))
    events = conn.receive(goaway(first))
    refused = [(e.stream_id, e.error_code, e.remote) for e in events[1:]]
    assert refused == [
        (second, ErrorCode.REFUSED_STREAM, True),
        (third, ErrorCode.REFUSED_STREAM, True),
    ]
    assert conn.open_outbound_streams == 1


def test_goaway_stops_new_streams() -> None:
    conn = client()
    conn.receive(goaway(0))
    with pytest.raises(StreamLimitError):
        conn.send_headers(conn.next_stream_id(), REQUEST)


def test_goaway_on_a_stream_is_protocol_error() -> None:
    conn = client()
    events = conn.receive(raw_frame(0x7, 0, 1, b"\x00" * 8))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_goaway_shorter_than_eight_bytes_is_frame_size_error() -> None:
    conn = client()
    events = conn.receive(raw_frame(0x7, 0, 0, b"\x00" * 7))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_our_graceful_goaway_names_the_last_stream_and_ignores_newer_ones() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer, stream_id=1)
    conn.goaway()
    (frame,) = sent(conn)
    assert isinstance(frame, GoAwayFrame)
    assert (frame.last_stream_id, frame.error_code) == (1, ErrorCode.NO_ERROR)
    assert conn.receive(peer.headers(3) + data(3)) == []
    assert [type(e) for e in conn.receive(data(1, end_stream=True))] == [DataReceived]


def test_two_step_goaway_keeps_streams_opened_before_the_second() -> None:
    conn, peer = server(), Peer()
    conn.goaway(ErrorCode.NO_ERROR, 2**31 - 1)
    open_request(conn, peer, stream_id=1)
    conn.goaway()
    assert [f.last_stream_id for f in sent(conn)] == [2**31 - 1, 1]
    assert conn.receive(peer.headers(3)) == []


def test_our_goaway_with_an_error_closes_the_connection() -> None:
    conn, peer = server(), Peer()
    conn.goaway(ErrorCode.INTERNAL_ERROR, debug=b"bye")
    assert conn.closed
    assert conn.receive(peer.headers(1)) == []
    with pytest.raises(ConnectionClosedError):
        conn.ping(b"12345678")


def test_connection_error_goaway_names_the_last_processed_stream() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer, stream_id=1)
    open_request(conn, peer, stream_id=3)
    conn.receive(window_update(0, 0))
    (frame,) = sent(conn)
    assert (frame.last_stream_id, frame.error_code) == (3, ErrorCode.PROTOCOL_ERROR)
    assert frame.additional_data == b"WINDOW_UPDATE of 0"
