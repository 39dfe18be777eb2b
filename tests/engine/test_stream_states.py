"""The stream state table of RFC 9113 section 5.1, pair by pair: as a table, then on the wire.

EXPECTED restates section 5.1 independently of the engine: the next state, or how the pair is
refused ("local": our caller may not send it; "stream"/"connection": the error the peer gets).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from sidecar.engine.connection import H2Connection
from sidecar.engine.errors import StreamStateError
from sidecar.engine.events import ConnectionTerminated, StreamReset
from sidecar.engine.frames import ErrorCode
from sidecar.engine.streams import TRANSITIONS, StreamInput, StreamState, refusal
from tests.engine.wire import (
    REQUEST,
    RESPONSE,
    TRAILERS,
    Peer,
    client,
    data,
    goaway_code,
    rst_stream,
    server,
    window_update,
)

S = StreamState
I = StreamInput  # noqa: E741 (a table key, read as "input")
Outcome = StreamState | str

STREAM_CLOSED = "stream STREAM_CLOSED"
CONNECTION = "connection PROTOCOL_ERROR"

EXPECTED: dict[tuple[StreamState, StreamInput], Outcome] = {
    # idle: HEADERS opens it; anything else from the peer is a connection error.
    (S.IDLE, I.SEND_HEADERS): S.OPEN,
    (S.IDLE, I.SEND_DATA): "local",
    (S.IDLE, I.SEND_END_STREAM): "local",
    (S.IDLE, I.SEND_RST_STREAM): "local",
    (S.IDLE, I.RECV_HEADERS): S.OPEN,
    (S.IDLE, I.RECV_DATA): CONNECTION,
    (S.IDLE, I.RECV_END_STREAM): CONNECTION,
    (S.IDLE, I.RECV_RST_STREAM): CONNECTION,
    (S.IDLE, I.RECV_WINDOW_UPDATE): CONNECTION,
    # open: anything goes; END_STREAM half-closes, RST_STREAM closes.
    (S.OPEN, I.SEND_HEADERS): S.OPEN,
    (S.OPEN, I.SEND_DATA): S.OPEN,
    (S.OPEN, I.SEND_END_STREAM): S.HALF_CLOSED_LOCAL,
    (S.OPEN, I.SEND_RST_STREAM): S.CLOSED,
    (S.OPEN, I.RECV_HEADERS): S.OPEN,
    (S.OPEN, I.RECV_DATA): S.OPEN,
    (S.OPEN, I.RECV_END_STREAM): S.HALF_CLOSED_REMOTE,
    (S.OPEN, I.RECV_RST_STREAM): S.CLOSED,
    (S.OPEN, I.RECV_WINDOW_UPDATE): S.OPEN,
    # half-closed (local): we send nothing but RST_STREAM (and WINDOW_UPDATE); the peer may.
    (S.HALF_CLOSED_LOCAL, I.SEND_HEADERS): "local",
    (S.HALF_CLOSED_LOCAL, I.SEND_DATA): "local",
    (S.HALF_CLOSED_LOCAL, I.SEND_END_STREAM): "local",
    (S.HALF_CLOSED_LOCAL, I.SEND_RST_STREAM): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, I.RECV_HEADERS): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, I.RECV_DATA): S.HALF_CLOSED_LOCAL,
    (S.HALF_CLOSED_LOCAL, I.RECV_END_STREAM): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, I.RECV_RST_STREAM): S.CLOSED,
    (S.HALF_CLOSED_LOCAL, I.RECV_WINDOW_UPDATE): S.HALF_CLOSED_LOCAL,
    # half-closed (remote): the peer sends only WINDOW_UPDATE and RST_STREAM; else STREAM_CLOSED.
    (S.HALF_CLOSED_REMOTE, I.SEND_HEADERS): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, I.SEND_DATA): S.HALF_CLOSED_REMOTE,
    (S.HALF_CLOSED_REMOTE, I.SEND_END_STREAM): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, I.SEND_RST_STREAM): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, I.RECV_HEADERS): STREAM_CLOSED,
    (S.HALF_CLOSED_REMOTE, I.RECV_DATA): STREAM_CLOSED,
    (S.HALF_CLOSED_REMOTE, I.RECV_END_STREAM): STREAM_CLOSED,
    (S.HALF_CLOSED_REMOTE, I.RECV_RST_STREAM): S.CLOSED,
    (S.HALF_CLOSED_REMOTE, I.RECV_WINDOW_UPDATE): S.HALF_CLOSED_REMOTE,
    # closed: late WINDOW_UPDATE / RST_STREAM are discarded, the rest is STREAM_CLOSED.
    (S.CLOSED, I.SEND_HEADERS): "local",
    (S.CLOSED, I.SEND_DATA): "local",
    (S.CLOSED, I.SEND_END_STREAM): "local",
    (S.CLOSED, I.SEND_RST_STREAM): "local",
    (S.CLOSED, I.RECV_HEADERS): STREAM_CLOSED,
    (S.CLOSED, I.RECV_DATA): STREAM_CLOSED,
    (S.CLOSED, I.RECV_END_STREAM): STREAM_CLOSED,
    (S.CLOSED, I.RECV_RST_STREAM): S.CLOSED,
    (S.CLOSED, I.RECV_WINDOW_UPDATE): S.CLOSED,
}

PAIRS = sorted(EXPECTED)


def pair_id(pair: tuple[StreamState, StreamInput]) -> str:
    return f"{pair[0].name}-{pair[1].name}"


def test_every_state_and_input_pair_is_expected() -> None:
    assert len(EXPECTED) == len(StreamState) * len(StreamInput)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_table_pair(pair: tuple[StreamState, StreamInput]) -> None:
    expected = EXPECTED[pair]
    if isinstance(expected, StreamState):
        assert TRANSITIONS.get(pair) is expected
        return
    assert pair not in TRANSITIONS
    verdict = refusal(*pair)
    if expected == "local":
        assert verdict is None
    elif expected == STREAM_CLOSED:
        assert verdict == (False, ErrorCode.STREAM_CLOSED)
    else:
        assert verdict == (True, ErrorCode.PROTOCOL_ERROR)


# -- the same pairs through a connection ---------------------------------------------------
# Sends are driven on a client's own stream; receipts on a server's peer stream, except
# RECV_HEADERS past idle, driven on a client awaiting its response (the only HEADERS a peer
# may send on a stream it did not open).

Setup = Callable[[], tuple[H2Connection, Peer, int]]


def server_in(state: StreamState) -> tuple[H2Connection, Peer, int]:
    conn, peer = server(), Peer()
    if state is S.IDLE:
        return conn, peer, 1
    conn.receive(peer.headers(1, REQUEST, end_stream=state is S.HALF_CLOSED_REMOTE))
    if state is S.HALF_CLOSED_LOCAL:
        conn.send_headers(1, RESPONSE, end_stream=True)
    elif state is S.CLOSED:
        conn.receive(rst_stream(1))
    conn.data_to_send()
    assert conn.stream_state(1) is state
    return conn, peer, 1


def client_in(state: StreamState, response: bool) -> tuple[H2Connection, Peer, int]:
    conn, peer = client(), Peer()
    stream_id = conn.next_stream_id()
    if state is S.IDLE:
        return conn, peer, stream_id
    conn.send_headers(stream_id, REQUEST, end_stream=state is S.HALF_CLOSED_LOCAL)
    if response or state is S.HALF_CLOSED_REMOTE:
        conn.receive(
            peer.headers(stream_id, RESPONSE, end_stream=state is S.HALF_CLOSED_REMOTE)
        )
    if state is S.CLOSED:
        conn.receive(rst_stream(stream_id))
    conn.data_to_send()
    assert conn.stream_state(stream_id) is state
    return conn, peer, stream_id


def act(conn: H2Connection, peer: Peer, stream_id: int, event: StreamInput) -> list[object]:
    if event is I.SEND_HEADERS:
        conn.send_headers(stream_id, TRAILERS)
    elif event is I.SEND_DATA:
        conn.send_data(stream_id, b"x")
    elif event is I.SEND_END_STREAM:
        conn.send_data(stream_id, b"", end_stream=True)
    elif event is I.SEND_RST_STREAM:
        conn.reset_stream(stream_id)
    elif event is I.RECV_HEADERS:
        headers = REQUEST if not conn.client else RESPONSE
        return list(conn.receive(peer.headers(stream_id, headers)))
    elif event is I.RECV_DATA:
        return list(conn.receive(data(stream_id, b"x")))
    elif event is I.RECV_END_STREAM:
        return list(conn.receive(data(stream_id, b"", end_stream=True)))
    elif event is I.RECV_RST_STREAM:
        return list(conn.receive(rst_stream(stream_id)))
    else:
        return list(conn.receive(window_update(stream_id, 1)))
    return []


def setup_for(state: StreamState, event: StreamInput) -> tuple[H2Connection, Peer, int]:
    if event.name.startswith("SEND"):
        return client_in(state, response=True)
    if event is I.RECV_HEADERS and state is not S.IDLE:
        return client_in(state, response=False)
    return server_in(state)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_wire_pair(pair: tuple[StreamState, StreamInput]) -> None:
    state, event = pair
    expected = EXPECTED[pair]
    conn, peer, stream_id = setup_for(state, event)
    if expected == "local":
        before = conn.stream_state(stream_id)
        with contextlib.suppress(StreamStateError):
            act(conn, peer, stream_id, event)
        assert conn.data_to_send() == b""  # refused: nothing went out
        assert conn.stream_state(stream_id) is before
        return
    events = act(conn, peer, stream_id, event)
    if isinstance(expected, StreamState):
        assert not [e for e in events if isinstance(e, ConnectionTerminated)]
        assert not [e for e in events if isinstance(e, StreamReset) and not e.remote]
        assert conn.stream_state(stream_id) is expected
    elif expected == STREAM_CLOSED:
        assert [(e.stream_id, e.error_code) for e in events if isinstance(e, StreamReset)] == [
            (stream_id, ErrorCode.STREAM_CLOSED)
        ]
        assert conn.stream_state(stream_id) is S.CLOSED
    else:
        assert isinstance(events[-1], ConnectionTerminated)
        assert goaway_code(conn) == ErrorCode.PROTOCOL_ERROR
