"""H2Connection as a whole: the handshake, the sending API, client <-> server calls."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    SettingsFrame,
    WindowUpdateFrame,
)

from sidecar.engine.connection import H2Connection
from sidecar.engine.errors import (
    ConnectionClosedError,
    EngineError,
    StreamLimitError,
    StreamStateError,
)
from sidecar.engine.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    TrailersReceived,
)
from sidecar.engine.frames import PREFACE, ErrorCode, SettingId
from sidecar.engine.limits import EngineLimits
from sidecar.engine.streams import StreamState
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
    with pytest.raises(EngineError):
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


def test_a_read_that_completes_a_split_frame_is_parsed_in_place() -> None:
    """Wherever two reads split the frames, the same events come out; the frames after the
    one completed are read from the second chunk itself (their data a view of it), not
    from a copy of the chunk joined to what came before."""
    peer = Peer()
    wire = (peer.headers(1, REQUEST) + data(1, MESSAGE) + data(1, MESSAGE[::-1])
            + data(1, MESSAGE, end_stream=True))
    whole = server().receive(wire)
    expected = [(type(e), bytes(e.data) if isinstance(e, DataReceived) else None)
                for e in whole]
    last_start = len(wire) - (9 + len(MESSAGE))
    for cut in range(1, len(wire)):
        conn = server()
        first, second = wire[:cut], wire[cut:]
        events = conn.receive(first) + conn.receive(second)
        got = [(type(e), bytes(e.data) if isinstance(e, DataReceived) else None)
               for e in events]
        assert got == expected, cut
        if cut < last_start:  # the last DATA frame lies whole in the second chunk
            assert events[-1].data.obj is second, cut


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


def test_take_output_hands_over_the_queued_pieces_with_data_uncopied() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    conn.data_to_send()
    payload = memoryview(b"x" * 1000)
    conn.send_data(stream_id, payload, end_stream=True)
    parts = conn.take_output()
    assert any(part is payload for part in parts)
    assert b"".join(parts)[-1000:] == b"x" * 1000
    assert conn.take_output() == []
    assert conn.data_to_send() == b""


def test_send_data_accepts_memoryview_and_bytearray() -> None:
    conn = client()
    stream_id = open_call(conn, end=False)
    assert conn.send_data(stream_id, memoryview(b"abc")) == 3
    assert conn.send_data(stream_id, bytearray(b"def"), end_stream=True) == 3
    assert b"".join(bytes(f.data) for f in sent(conn)) == b"abcdef"


# -- client <-> server ---------------------------------------------------------------------


def pair(limits: EngineLimits | None = None) -> tuple[H2Connection, H2Connection]:
    """A client and a server engine that completed their handshake with each other."""
    near, far = H2Connection(client=True, settings=limits), H2Connection(False, limits)
    near.initiate()
    far.initiate()
    relay(near, far)
    return near, far


def relay(near: H2Connection, far: H2Connection) -> tuple[list[Event], list[Event]]:
    """Move bytes both ways until both sides are quiet; the events each side saw."""
    near_events: list[Event] = []
    far_events: list[Event] = []
    while True:
        to_far, to_near = near.data_to_send(), far.data_to_send()
        if not to_far and not to_near:
            return near_events, far_events
        far_events += far.receive(to_far)
        near_events += near.receive(to_near)


def test_unary_grpc_call_between_client_and_server() -> None:
    near, far = pair()
    stream_id = near.next_stream_id()
    near.send_headers(stream_id, [*REQUEST, (b"grpc-timeout", b"1S")])
    assert near.send_data(stream_id, MESSAGE, end_stream=True) == len(MESSAGE)
    _, at_server = relay(near, far)
    assert at_server == [
        RequestReceived(stream_id, [*REQUEST, (b"grpc-timeout", b"1S")], False),
        DataReceived(stream_id, memoryview(MESSAGE), len(MESSAGE), True),
    ]
    far.acknowledge_received_data(stream_id, len(MESSAGE))
    far.send_headers(stream_id, RESPONSE)
    far.send_data(stream_id, b"\x00\x00\x00\x00\x02ok")
    far.send_trailers(stream_id, TRAILERS)
    at_client, _ = relay(near, far)
    assert [type(e) for e in at_client] == [ResponseReceived, DataReceived, TrailersReceived]
    assert at_client[0].headers == RESPONSE
    assert bytes(at_client[1].data) == b"\x00\x00\x00\x00\x02ok"
    assert at_client[2].headers == TRAILERS
    assert near.stream_state(stream_id) is far.stream_state(stream_id) is StreamState.CLOSED
    assert near.open_outbound_streams == far.open_inbound_streams == 0


def test_many_calls_reuse_the_hpack_tables() -> None:
    near, far = pair()
    sizes = []
    for _ in range(5):
        stream_id = near.next_stream_id()
        near.send_headers(stream_id, REQUEST, end_stream=True)
        out = near.data_to_send()
        sizes.append(len(out))
        assert far.receive(out) == [RequestReceived(stream_id, REQUEST, True)]
        far.send_headers(stream_id, RESPONSE, end_stream=True)
        relay(near, far)
    assert sizes[1] < sizes[0] / 4


def test_a_large_stream_flows_under_back_pressure() -> None:
    near, far = pair(EngineLimits(initial_window=65_535, connection_window=65_535))
    body = bytes(range(256)) * 4096  # 1 MiB
    stream_id = near.next_stream_id()
    near.send_headers(stream_id, REQUEST)
    received = bytearray()
    offset = 0
    ended = False
    while not ended:
        taken = near.send_data(stream_id, memoryview(body)[offset:], end_stream=True)
        offset += taken
        assert taken or offset < len(body)  # nothing is sent until the window reopens
        _, events = relay(near, far)
        for event in events:
            if isinstance(event, DataReceived):
                received += event.data
                far.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
                ended = event.end_stream
        relay(near, far)
    assert bytes(received) == body


def test_client_waits_for_a_free_stream_under_the_peer_limit() -> None:
    near, far = pair(EngineLimits(max_concurrent_streams=2))
    for _ in range(2):
        near.send_headers(near.next_stream_id(), REQUEST, end_stream=True)
    with pytest.raises(StreamLimitError):
        near.send_headers(near.next_stream_id(), REQUEST, end_stream=True)
    _, events = relay(near, far)
    far.send_headers(events[0].stream_id, RESPONSE, end_stream=True)
    relay(near, far)
    near.send_headers(near.next_stream_id(), REQUEST, end_stream=True)


def test_ping_round_trip() -> None:
    near, far = pair()
    near.ping(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    events, _ = relay(near, far)
    assert events == [PingAckReceived(b"\x00\x01\x02\x03\x04\x05\x06\x07")]


def test_graceful_goaway_lets_the_open_call_finish() -> None:
    near, far = pair()
    stream_id = near.next_stream_id()
    near.send_headers(stream_id, REQUEST, end_stream=True)
    relay(near, far)
    far.goaway()
    events, _ = relay(near, far)
    assert events == [GoAwayReceived(stream_id, ErrorCode.NO_ERROR, b"")]
    far.send_headers(stream_id, RESPONSE)
    far.send_trailers(stream_id, TRAILERS)
    events, _ = relay(near, far)
    assert [type(e) for e in events] == [ResponseReceived, TrailersReceived]


def test_a_stream_reset_by_the_client_reaches_the_server() -> None:
    near, far = pair()
    stream_id = near.next_stream_id()
    near.send_headers(stream_id, REQUEST)
    near.reset_stream(stream_id, ErrorCode.CANCEL)
    _, events = relay(near, far)
    assert events[-1] == StreamReset(stream_id, ErrorCode.CANCEL, True)
