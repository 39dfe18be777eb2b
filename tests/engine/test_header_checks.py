"""Received header blocks checked as RFC 9113 sections 8.2 and 8.3 say: malformed ones reset
their stream with PROTOCOL_ERROR (and StreamReset(remote=False)), never reaching the caller."""

from __future__ import annotations

import pytest

from sidecar.engine.events import RequestReceived, ResponseReceived, TrailersReceived
from sidecar.engine.frames import ErrorCode
from tests.engine.wire import (
    REQUEST,
    RESPONSE,
    Peer,
    client,
    of_type,
    open_call,
    open_request,
    server,
    stream_error,
)

Headers = list[tuple[bytes, bytes]]


def without(name: bytes) -> Headers:
    return [(n, v) for n, v in REQUEST if n != name]


MALFORMED_REQUESTS: dict[str, Headers] = {
    "uppercase name": [*REQUEST, (b"X-Upper", b"1")],
    "space in name": [*REQUEST, (b"x y", b"1")],
    "colon in regular name": [*REQUEST, (b"x:y", b"1")],
    "non-ascii name": [*REQUEST, (b"x\xe9", b"1")],
    "empty name": [*REQUEST, (b"", b"1")],
    "connection": [*REQUEST, (b"connection", b"close")],
    "keep-alive": [*REQUEST, (b"keep-alive", b"timeout=5")],
    "proxy-connection": [*REQUEST, (b"proxy-connection", b"keep-alive")],
    "transfer-encoding": [*REQUEST, (b"transfer-encoding", b"chunked")],
    "upgrade": [*REQUEST, (b"upgrade", b"h2c")],
    "te other than trailers": [(n, b"gzip" if n == b"te" else v) for n, v in REQUEST],
    "pseudo-header after regular": [*REQUEST, (b":authority", b"late")],
    "unknown pseudo-header": [(b":foo", b"bar"), *REQUEST],
    "response pseudo-header in request": [(b":status", b"200"), *REQUEST],
    "duplicated pseudo-header": [(b":path", b"/again"), *REQUEST],
    "missing :method": without(b":method"),
    "missing :scheme": without(b":scheme"),
    "missing :path": without(b":path"),
    "empty :path": [(n, b"" if n == b":path" else v) for n, v in REQUEST],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"h:1"), (b":path", b"/")],
    "CONNECT without :authority": [(b":method", b"CONNECT")],
    "CR in value": [*REQUEST, (b"x-a", b"a\rb")],
    "LF in value": [*REQUEST, (b"x-a", b"a\nb")],
    "NUL in value": [*REQUEST, (b"x-a", b"a\x00b")],
    "leading space in value": [*REQUEST, (b"x-a", b" a")],
    "trailing tab in value": [*REQUEST, (b"x-a", b"a\t")],
}


@pytest.mark.parametrize("headers", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_malformed_request_is_a_stream_protocol_error(headers: Headers) -> None:
    conn, peer = server(), Peer()
    events = conn.receive(peer.headers(1, headers))
    assert stream_error(conn, events) == (1, ErrorCode.PROTOCOL_ERROR)
    assert not of_type(events, RequestReceived)
    assert conn.open_inbound_streams == 0


def test_a_malformed_request_leaves_the_connection_and_hpack_usable() -> None:
    conn, peer = server(), Peer()
    conn.receive(peer.headers(1, MALFORMED_REQUESTS["uppercase name"]))
    conn.data_to_send()
    assert conn.receive(peer.headers(3, REQUEST)) == [RequestReceived(3, REQUEST, False)]


@pytest.mark.parametrize(
    "headers",
    [
        [*REQUEST, (b"x-empty", b"")],
        [*REQUEST, (b"x-inner", b"a b\tc")],
        [*REQUEST, (b"x-!#$%&'*+-.^_`|~09az", b"\x01\x7f\xff")],
        [(b":method", b"CONNECT"), (b":authority", b"host:443")],
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"*")],
    ],
    ids=["empty value", "inner whitespace", "token characters", "CONNECT", "no authority"],
)
def test_valid_requests_are_delivered(headers: Headers) -> None:
    conn, peer = server(), Peer()
    assert conn.receive(peer.headers(1, headers)) == [RequestReceived(1, headers, False)]


def test_te_trailers_is_allowed() -> None:
    conn, peer = server(), Peer()
    (event,) = conn.receive(peer.headers(1, REQUEST))
    assert (b"te", b"trailers") in event.headers


MALFORMED_RESPONSES: dict[str, Headers] = {
    "missing :status": [(b"content-type", b"application/grpc")],
    "request pseudo-header": [(b":status", b"200"), (b":path", b"/")],
    "duplicated :status": [(b":status", b"200"), (b":status", b"204")],
    "non-numeric :status": [(b":status", b"2xx")],
    "short :status": [(b":status", b"20")],
    "uppercase name": [*RESPONSE, (b"Grpc-Status", b"0")],
}


@pytest.mark.parametrize("headers", MALFORMED_RESPONSES.values(), ids=MALFORMED_RESPONSES.keys())
def test_malformed_response_is_a_stream_protocol_error(headers: Headers) -> None:
    conn, peer = client(), Peer()
    stream_id = open_call(conn)
    events = conn.receive(peer.headers(stream_id, headers))
    assert stream_error(conn, events) == (stream_id, ErrorCode.PROTOCOL_ERROR)
    assert not of_type(events, ResponseReceived)


@pytest.mark.parametrize("name", [b":status", b":path", b":x"])
def test_pseudo_header_in_trailers_is_a_stream_protocol_error(name: bytes) -> None:
    conn, peer = server(), Peer()
    open_request(conn, peer)
    events = conn.receive(peer.headers(1, [(b"grpc-status", b"0"), (name, b"1")], True))
    assert stream_error(conn, events) == (1, ErrorCode.PROTOCOL_ERROR)
    assert not of_type(events, TrailersReceived)


def test_connection_specific_header_in_trailers_is_a_stream_protocol_error() -> None:
    conn, peer = client(), Peer()
    stream_id = open_call(conn)
    conn.receive(peer.headers(stream_id, RESPONSE))
    events = conn.receive(peer.headers(stream_id, [(b"connection", b"close")], True))
    assert stream_error(conn, events) == (stream_id, ErrorCode.PROTOCOL_ERROR)
