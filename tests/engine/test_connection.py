"""H2Connection as a whole: the handshake, the sending API, client <-> server calls."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    SettingsFrame,
    WindowUpdateFrame,
)

from sidecar.engine.connection import H2Connection
from sidecar.engine.errors import ConnectionClosedError, StreamStateError
from sidecar.engine.events import (
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
)
from sidecar.engine.frames import PREFACE, ErrorCode, SettingId
from sidecar.engine.limits import EngineLimits
from tests.engine.wire import (
    MESSAGE,
    REQUEST,
    RESPONSE,
    SMALL,
    TRAILERS,
    Peer,
    client,
    connection_error,
    data,
    of_type,
    open_call,
    open_request,
    parse,
    ping,
    raw_frame,
    sent,
    server,
    settings,
    window_update,
)

# -- handshake -----------------------------------------------------------------------------


def test_client_initiate_sends_preface_settings_and_connection_window_update() -> None:
    conn = H2Connection(client=True)
    conn.initiate()
    out = conn.data_to_send()
    assert out.startswith(PREFACE)
    frames = parse(out)
    assert [type(f) for f in frames] == [SettingsFrame, WindowUpdateFrame]
    assert frames[1].window_increment == 16 * 1024 * 1024 - 65_535


def test_server_initiate_sends_settings_without_preface() -> None:
    conn = H2Connection(client=False)
    conn.initiate()
    out = conn.data_to_send()
    assert not out.startswith(PREFACE)
    assert isinstance(parse(out)[0], SettingsFrame)


def test_initiate_advertises_the_configured_limits() -> None:
    limits = EngineLimits(
        max_header_list_size=8192, max_concurrent_streams=7, initial_window=100_000,
        max_frame_size=32_768,
    )
    conn = H2Connection(client=False, settings=limits)
    conn.initiate()
    values = parse(conn.data_to_send())[0].settings
    assert values == {
        SettingId.ENABLE_PUSH: 0,
        SettingId.MAX_CONCURRENT_STREAMS: 7,
        SettingId.INITIAL_WINDOW_SIZE: 100_000,
        SettingId.MAX_FRAME_SIZE: 32_768,
        SettingId.MAX_HEADER_LIST_SIZE: 8192,
    }


def test_connection_window_at_the_default_sends_no_window_update() -> None:
    conn = H2Connection(client=False, settings=SMALL)
    conn.initiate()
    assert [type(f) for f in parse(conn.data_to_send())] == [SettingsFrame]


def test_initiate_twice_is_refused() -> None:
    conn = H2Connection(client=True)
    conn.initiate()
    with pytest.raises(StreamStateError):
        conn.initiate()


def test_server_accepts_a_preface_split_across_reads() -> None:
    conn = H2Connection(client=False)
    for byte in PREFACE:
        assert conn.receive(bytes([byte])) == []
    assert of_type(conn.receive(settings()), RemoteSettingsChanged)


def test_server_refuses_an_invalid_preface() -> None:
    conn = H2Connection(client=False)
    events = conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_server_refuses_a_preface_that_goes_wrong_late() -> None:
    conn = H2Connection(client=False)
    assert conn.receive(PREFACE[:20]) == []
    events = conn.receive(b"XXXX")
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("role", ["client", "server"])
def test_first_frame_other_than_settings_is_protocol_error(role: str) -> None:
    conn = H2Connection(client=role == "client")
    events = conn.receive((b"" if role == "client" else PREFACE) + ping())
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_first_frame_settings_ack_is_protocol_error() -> None:
    conn = H2Connection(client=True)
    events = conn.receive(settings(ack=True))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_frames_split_byte_by_byte_are_reassembled() -> None:
    conn, peer = server(), Peer()
    wire = peer.headers(1, REQUEST) + data(1, MESSAGE, end_stream=True)
    events = []
    for byte in wire:
        events += conn.receive(bytes([byte]))
    assert [type(e) for e in events] == [RequestReceived, DataReceived]
    assert bytes(events[1].data) == MESSAGE


def test_several_frames_in_one_read_are_all_processed() -> None:
    conn, peer = server(), Peer()
    wire = b"".join(peer.headers(i, REQUEST, end_stream=True) for i in (1, 3, 5))
    assert [e.stream_id for e in conn.receive(wire)] == [1, 3, 5]


def test_receive_accepts_bytearray_and_memoryview() -> None:
    conn, peer = server(), Peer()
    assert conn.receive(bytearray(peer.headers(1)))
    assert conn.receive(memoryview(peer.headers(3)))


def test_unknown_frame_types_are_ignored() -> None:
    conn = server()
    assert conn.receive(raw_frame(0xFA, 0xFF, 1, b"whatever")) == []
    assert not conn.closed


def test_frame_larger_than_our_max_frame_size_is_refused_before_its_payload() -> None:
    conn = server()
    header_only = (16_777_215).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    events = conn.receive(header_only)  # the 16 MiB payload is never waited for
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_unknown_frame_larger_than_max_frame_size_is_frame_size_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0xFA, 0, 0, b"x" * 16_385))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_frame_of_exactly_max_frame_size_is_accepted() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(data(1, b"x" * 16_384))
    assert events[0].flow_controlled_length == 16_384


# -- sending API ---------------------------------------------------------------------------


def test_sending_on_a_terminated_connection_raises() -> None:
    conn = server()
    conn.receive(window_update(0, 0))
    for attempt in (
        lambda: conn.send_headers(1, RESPONSE),
        lambda: conn.send_data(1, b"x"),
        lambda: conn.ping(b"12345678"),
        lambda: conn.goaway(),
        lambda: conn.reset_stream(1),
    ):
        with pytest.raises(ConnectionClosedError):
            attempt()


def test_acknowledging_on_a_terminated_connection_is_harmless() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    conn.receive(data(1) + window_update(0, 0))
    conn.acknowledge_received_data(1, len(MESSAGE))


def test_server_cannot_open_streams() -> None:
    conn = server()
    with pytest.raises(StreamStateError):
        conn.send_headers(2, REQUEST)
    with pytest.raises(StreamStateError):
        conn.next_stream_id()


def test_client_stream_ids_are_odd_and_increasing() -> None:
    conn = client()
    assert conn.next_stream_id() == 1
    open_call(conn)
    assert conn.next_stream_id() == 3
    for bad in (1, 2, 4):
        with pytest.raises(StreamStateError):
            conn.send_headers(bad, REQUEST)


def test_client_may_skip_stream_ids() -> None:
    conn = client()
    conn.send_headers(9, REQUEST, end_stream=True)
    assert conn.next_stream_id() == 11


def test_data_after_our_end_stream_is_refused() -> None:
    conn = client()
    stream_id = open_call(conn, end=True)
    with pytest.raises(StreamStateError):
        conn.send_data(stream_id, b"x")
    with pytest.raises(StreamStateError):
        conn.send_headers(stream_id, TRAILERS)


def test_data_on_an_unknown_stream_is_refused() -> None:
    with pytest.raises(StreamStateError):
        client().send_data(1, b"x")


def test_data_to_send_empties_the_queue() -> None:
    conn = server()
    conn.ping(b"12345678")
    assert conn.data_to_send()
    assert conn.data_to_send() == b""


def test_send_data_accepts_memoryview_and_bytearray() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    assert conn.send_data(stream_id, memoryview(b"abc")) == 3
    assert conn.send_data(stream_id, bytearray(b"def"), end_stream=True) == 3
    assert b"".join(bytes(f.data) for f in sent(conn)) == b"abcdef"
