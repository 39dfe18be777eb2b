"""DATA, HEADERS and CONTINUATION on receipt: padding, assembly, and every error they raise."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    HeadersFrame,
)

from sidecar.engine.events import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    TrailersReceived,
)
from sidecar.engine.frames import ErrorCode
from tests.engine.wire import (
    REQUEST,
    RESPONSE,
    TRAILERS,
    Peer,
    client,
    connection_error,
    continuation,
    data,
    of_type,
    open_call,
    open_request,
    ping,
    raw_frame,
    rst_stream,
    sent,
    server,
    stream_error,
    window_update,
)

# -- DATA ----------------------------------------------------------------------------------


def test_data_is_delivered_as_a_view_without_its_padding() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    (event,) = conn.receive(data(1, b"payload", end_stream=True, pad=4))
    assert isinstance(event.data, memoryview)
    assert (bytes(event.data), event.end_stream) == (b"payload", True)


def test_padded_data_whose_padding_fills_the_frame_is_protocol_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(raw_frame(0x0, 0x8, 1, b"\x05abcd"))  # pad length = frame length
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_padded_data_with_padding_longer_than_the_frame_is_protocol_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(raw_frame(0x0, 0x8, 1, b"\xffab"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_padded_data_made_only_of_padding_is_empty_data() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    (event,) = conn.receive(raw_frame(0x0, 0x8 | 0x1, 1, b"\x03\x00\x00\x00"))
    assert (bytes(event.data), event.flow_controlled_length, event.end_stream) == (b"", 4, True)


def test_padded_data_without_a_pad_length_is_frame_size_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(raw_frame(0x0, 0x8, 1))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_data_on_stream_zero_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x0, 0, 0, b"x"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_data_on_an_idle_stream_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(data(1))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_data_on_half_closed_remote_stream_is_stream_closed() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer, end=True)
    events = conn.receive(data(1))
    assert stream_error(conn, events) == (1, ErrorCode.STREAM_CLOSED)


def test_data_after_the_peer_reset_the_stream_is_stream_closed() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    conn.receive(rst_stream(1))
    events = conn.receive(data(1))
    assert stream_error(conn, events) == (1, ErrorCode.STREAM_CLOSED)


def test_late_data_on_a_stream_we_reset_is_dropped_quietly() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    conn.reset_stream(1, ErrorCode.CANCEL)
    conn.data_to_send()
    assert conn.receive(data(1) + peer.headers(1, TRAILERS, end_stream=True)) == []
    assert sent(conn) == []


def test_data_before_the_response_headers_is_a_stream_protocol_error() -> None:
    conn = client()
    stream_id = open_call(conn)
    events = conn.receive(data(stream_id))
    assert stream_error(conn, events) == (stream_id, ErrorCode.PROTOCOL_ERROR)


def test_data_on_a_stream_id_skipped_by_the_peer_is_protocol_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer, stream_id=5)
    events = conn.receive(data(3))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


# -- HEADERS and CONTINUATION --------------------------------------------------------------


def test_request_headers_open_a_stream() -> None:
    conn, peer = server(), Peer()
    (event,) = conn.receive(peer.headers(1, REQUEST))
    assert event == RequestReceived(1, REQUEST, False)
    assert conn.open_inbound_streams == 1


def test_request_with_end_stream_reports_it() -> None:
    conn, peer = server(), Peer()
    (event,) = conn.receive(peer.headers(1, REQUEST, end_stream=True))
    assert event == RequestReceived(1, REQUEST, True)


def padded_headers(peer: Peer, pad: int, priority: bool = False, depends_on: int = 0) -> bytes:
    frame = HeadersFrame(1, peer.block(REQUEST))
    frame.flags.add("END_HEADERS")
    if pad:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    if priority:
        frame.flags.add("PRIORITY")
        frame.depends_on = depends_on
        frame.stream_weight = 200
    return bytes(frame.serialize())


def test_padded_headers_are_decoded_without_their_padding() -> None:
    conn, peer = server(), Peer()
    (event,) = conn.receive(padded_headers(peer, pad=20))
    assert event == RequestReceived(1, REQUEST, False)


def test_priority_fields_in_headers_are_skipped() -> None:
    conn, peer = server(), Peer()
    (event,) = conn.receive(padded_headers(peer, pad=3, priority=True, depends_on=0))
    assert event == RequestReceived(1, REQUEST, False)


def test_headers_whose_padding_exceeds_the_fragment_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x1, 0x4 | 0x8, 1, b"\x05\x82\x86"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_padded_headers_without_a_pad_length_is_frame_size_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x1, 0x4 | 0x8, 1))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_headers_too_short_for_their_priority_fields_is_frame_size_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x1, 0x4 | 0x20, 1, b"\x00\x00\x00"))
    assert connection_error(conn, events) == ErrorCode.FRAME_SIZE_ERROR


def test_headers_depending_on_their_own_stream_is_a_stream_protocol_error() -> None:
    conn, peer = server(), Peer()
    events = conn.receive(padded_headers(peer, pad=0, priority=True, depends_on=1))
    assert stream_error(conn, events) == (1, ErrorCode.PROTOCOL_ERROR)
    assert not of_type(events, RequestReceived)


def test_headers_on_stream_zero_is_protocol_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x1, 0x4, 0, b"\x82"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_header_block_in_continuation_frames_is_assembled() -> None:
    conn, peer = server(), Peer()
    block = peer.block(REQUEST)
    wire = (
        raw_frame(0x1, 0x1, 1, block[:5])
        + continuation(1, block[5:9], end_headers=False)
        + continuation(1, block[9:])
    )
    assert conn.receive(wire) == [RequestReceived(1, REQUEST, True)]


def test_no_event_before_end_headers() -> None:
    conn, peer = server(), Peer()
    block = peer.block(REQUEST)
    assert conn.receive(raw_frame(0x1, 0, 1, block[:5])) == []
    assert conn.receive(continuation(1, block[5:], end_headers=False)) == []
    assert conn.receive(continuation(1, b"")) == [RequestReceived(1, REQUEST, False)]


@pytest.mark.parametrize(
    "interloper",
    [data(1), ping(), raw_frame(0xFA, 0, 0, b"x"), Peer().headers(3), window_update(0, 1)],
    ids=["data", "ping", "unknown", "headers", "window_update"],
)
def test_frame_interleaved_in_a_header_block_is_protocol_error(interloper: bytes) -> None:
    conn, peer = server(), Peer()
    block = peer.block(REQUEST)
    events = conn.receive(raw_frame(0x1, 0, 1, block[:5]) + interloper)
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_continuation_on_another_stream_is_protocol_error() -> None:
    conn, peer = server(), Peer()
    block = peer.block(REQUEST)
    events = conn.receive(raw_frame(0x1, 0, 1, block[:5]) + continuation(3, block[5:]))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_continuation_without_headers_is_protocol_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(continuation(1, b"\x82"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_invalid_hpack_is_compression_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x1, 0x4, 1, b"\x80"))  # index 0
    assert connection_error(conn, events) == ErrorCode.COMPRESSION_ERROR


def test_truncated_hpack_is_compression_error() -> None:
    conn = server()
    events = conn.receive(raw_frame(0x1, 0x4, 1, b"\x82\x40\x05ab"))
    assert connection_error(conn, events) == ErrorCode.COMPRESSION_ERROR


def test_even_stream_id_from_a_client_is_protocol_error() -> None:
    conn, peer = server(), Peer()
    events = conn.receive(peer.headers(2))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_stream_id_skipped_by_a_newer_stream_is_protocol_error() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer, stream_id=7)
    events = conn.receive(peer.headers(5))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_headers_on_a_closed_stream_is_stream_closed_and_hpack_stays_in_sync() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer, end=True)
    conn.send_headers(1, RESPONSE, end_stream=True)
    conn.data_to_send()
    events = conn.receive(peer.headers(1, [(b"x-new", b"indexed now")], end_stream=True))
    assert stream_error(conn, events) == (1, ErrorCode.STREAM_CLOSED)
    (event,) = conn.receive(peer.headers(3, [*REQUEST, (b"x-new", b"indexed now")]))
    assert event.headers[-1] == (b"x-new", b"indexed now")


def test_trailers_end_the_stream() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(data(1) + peer.headers(1, TRAILERS, end_stream=True))
    assert events[-1] == TrailersReceived(1, TRAILERS)
    assert conn.open_inbound_streams == 1  # half-closed (remote) until we answer
    events = conn.receive(data(1))
    assert stream_error(conn, events) == (1, ErrorCode.STREAM_CLOSED)


def test_trailers_without_end_stream_are_malformed() -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(peer.headers(1, TRAILERS))
    assert stream_error(conn, events) == (1, ErrorCode.PROTOCOL_ERROR)


def test_client_receives_response_data_and_trailers() -> None:
    conn, peer = client(), Peer()
    stream_id = open_call(conn)
    events = conn.receive(
        peer.headers(stream_id, RESPONSE) + data(stream_id)
        + peer.headers(stream_id, TRAILERS, end_stream=True)
    )
    assert [type(e) for e in events] == [ResponseReceived, DataReceived, TrailersReceived]
    assert events[0] == ResponseReceived(stream_id, RESPONSE, False)
    assert conn.open_outbound_streams == 0


def test_trailers_only_response_ends_the_stream() -> None:
    conn, peer = client(), Peer()
    stream_id = open_call(conn)
    status = [(b":status", b"200"), (b"grpc-status", b"14")]
    events = conn.receive(peer.headers(stream_id, status, end_stream=True))
    assert events == [ResponseReceived(stream_id, status, True)]


def test_informational_response_is_dropped_before_the_final_one() -> None:
    conn, peer = client(), Peer()
    stream_id = open_call(conn)
    events = conn.receive(
        peer.headers(stream_id, [(b":status", b"100")]) + peer.headers(stream_id, RESPONSE)
    )
    assert events == [ResponseReceived(stream_id, RESPONSE, False)]


def test_informational_response_with_end_stream_is_malformed() -> None:
    conn, peer = client(), Peer()
    stream_id = open_call(conn)
    events = conn.receive(peer.headers(stream_id, [(b":status", b"103")], end_stream=True))
    assert stream_error(conn, events) == (stream_id, ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("role", ["client", "server"])
def test_push_promise_is_protocol_error(role: str) -> None:
    conn = client() if role == "client" else server()
    events = conn.receive(raw_frame(0x5, 0x4, 1, b"\x00\x00\x00\x02\x82"))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_headers_on_a_server_initiated_stream_is_protocol_error() -> None:
    conn, peer = client(), Peer()
    events = conn.receive(peer.headers(2, RESPONSE))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_headers_on_a_client_stream_we_never_opened_is_protocol_error() -> None:
    conn, peer = client(), Peer()
    events = conn.receive(peer.headers(1, RESPONSE))
    assert connection_error(conn, events) == ErrorCode.PROTOCOL_ERROR


def test_never_indexed_fields_are_reported_by_name() -> None:
    conn, peer = server(), Peer()
    block = bytes(
        peer.encoder.encode(
            [(n, v, False) for n, v in REQUEST] + [(b"authorization", b"Bearer t", True)]
        )
    )
    (event,) = conn.receive(raw_frame(0x1, 0x4, 1, block))
    assert event.never_indexed == frozenset({b"authorization"})
