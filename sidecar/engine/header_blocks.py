"""The stream table and the header blocks (HEADERS + CONTINUATION) that open and end streams.

A header block is bounded while it is assembled: past `max_header_list_size` encoded bytes
the connection ends with ENHANCE_YOUR_CALM before anything more is buffered. A block that
cannot be decoded cannot be skipped either (it would desynchronise HPACK), so every block is
decoded, even for a stream we go on to refuse, and RFC 9113 section 10.5.1 allows only one
way out of one we will not decode: closing the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from sidecar.engine.errors import ConnectionViolation, StreamViolation
from sidecar.engine.events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TrailersReceived,
)
from sidecar.engine.frames import DEFAULT_WINDOW, ErrorCode
from sidecar.engine.headers import (
    MalformedHeaders,
    request_headers,
    response_headers,
    trailer_headers,
)
from sidecar.engine.hpack import Field, HeaderCodec
from sidecar.engine.limits import EngineLimits
from sidecar.engine.streams import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    IDLE,
    OPEN,
    RECV_END_STREAM,
    RECV_HEADERS,
    TRANSITIONS,
    Stream,
    StreamInput,
    refusal,
)

_T = TypeVar("_T")

# What a header block's stream is, known from its HEADERS frame.
_NEW = 0  # the peer opens it
_KNOWN = 1  # in the table
_FORGOTTEN = 2  # used before and closed since
_MAX_GAPS = 16
_MAX_DECODED = 32  # blocks of indexed fields remembered decoded and checked


class _Decoded:
    """A decoded block, and what each check made of it (reused while it means the same)."""

    __slots__ = ("checked", "fields", "generation")

    def __init__(self, fields: list[Field], generation: int) -> None:
        self.fields = fields
        self.generation = generation
        self.checked: dict[Callable[[list[Field]], Any], Any] = {}

    def check(self, check: Callable[[list[Field]], _T]) -> _T:
        """`check(fields)`, once per block (headers.py's checks are pure; their results,
        the event's header lists, are never changed by whoever receives them)."""
        found = self.checked.get(check)
        if found is None:
            found = self.checked[check] = check(self.fields)
        return cast("_T", found)


class HeaderBlocks:
    """Streams by id, and header-block assembly, decoding and checking."""

    def __init__(self, client: bool, limits: EngineLimits) -> None:
        self.client = client
        """True for the client role (we open odd streams), False for the server role."""
        self._limits = limits
        self._codec = HeaderCodec(limits.max_header_list_size, limits.max_encoder_table_size)
        self._streams: dict[int, Stream] = {}
        self._remote_parity = 0 if client else 1
        self._highest_remote = 0
        self._next_local = 1 if client else 2
        self._inbound_open = 0
        self._outbound_open = 0
        self._last_processed = 0
        self._goaway_last: int | None = None
        # Streams we reset lately: the peer's frames still in flight on them are dropped.
        self._quiet: dict[int, None] = {}
        # Ids skipped by a new stream (closed without ever opening, section 5.1.1), as
        # inclusive ranges, remote then local; the oldest are forgotten past _MAX_GAPS.
        self._gaps: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        self._peer_initial_window = DEFAULT_WINDOW
        self._max_block = limits.max_header_list_size
        self._block_stream = 0  # stream of the block being assembled, 0 when none
        self._block_kind = _NEW
        self._block_parts: list[bytes] = []
        self._block_size = 0
        self._block_end_stream = False
        self._block_self_dependent = False
        # Gateways and load generators send the same blocks again and again (responses,
        # trailers, repeated requests): a block of indexed fields only leaves the HPACK
        # table as it was, so while no other block came, it decodes to what it did before.
        self._decoded: dict[bytes, _Decoded] = {}

    def _begin_block(
        self, stream_id: int, fragment: bytes, end_headers: bool, end_stream: bool,
        self_dependent: bool, events: list[Event],
    ) -> None:
        if len(fragment) > self._max_block:
            raise ConnectionViolation(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        kind = self._classify(stream_id)
        if end_headers:
            self._end_block(stream_id, kind, fragment, end_stream, self_dependent, events)
            return
        self._block_stream = stream_id
        self._block_kind = kind
        self._block_parts = [fragment]
        self._block_size = len(fragment)
        self._block_end_stream = end_stream
        self._block_self_dependent = self_dependent

    def _continue_block(self, fragment: bytes, end_headers: bool, events: list[Event]) -> None:
        size = self._block_size + len(fragment)
        if size > self._max_block:
            raise ConnectionViolation(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        self._block_parts.append(fragment)
        self._block_size = size
        if end_headers:
            block = b"".join(self._block_parts)
            stream_id = self._block_stream
            self._block_parts = []
            self._block_stream = 0
            self._end_block(
                stream_id, self._block_kind, block, self._block_end_stream,
                self._block_self_dependent, events,
            )

    def _classify(self, stream_id: int) -> int:
        if stream_id in self._streams:
            return _KNOWN
        if stream_id & 1 == self._remote_parity:
            if self.client:
                raise ConnectionViolation(
                    ErrorCode.PROTOCOL_ERROR, "HEADERS on a server stream (push is disabled)"
                )
            highest = self._highest_remote
            if stream_id > highest:
                self._note_opened(stream_id, highest + 2 if highest else 1, remote=True)
                self._highest_remote = stream_id
                return _NEW
        elif stream_id >= self._next_local:
            raise ConnectionViolation(ErrorCode.PROTOCOL_ERROR, "HEADERS on an idle stream")
        if self._skipped(stream_id):
            raise ConnectionViolation(
                ErrorCode.PROTOCOL_ERROR, "HEADERS on a stream id that was skipped"
            )
        return _FORGOTTEN

    def _end_block(
        self, stream_id: int, kind: int, block: bytes, end_stream: bool, self_dependent: bool,
        events: list[Event],
    ) -> None:
        codec = self._codec
        generation = codec.generation
        decoded = self._decoded.get(block)
        if decoded is None or decoded.generation != generation:
            decoded = _Decoded(codec.decode(block), generation)
            if codec.generation == generation:  # indexed fields only: worth remembering
                if len(self._decoded) >= _MAX_DECODED:
                    self._decoded.clear()
                self._decoded[block] = decoded
        try:
            if kind == _NEW:
                self._open_remote(stream_id, decoded, end_stream, self_dependent, events)
            elif kind == _KNOWN:
                self._known_block(
                    self._streams[stream_id], decoded, end_stream, self_dependent, events
                )
            else:
                self._refuse(stream_id, None, RECV_HEADERS)
        except MalformedHeaders as exc:
            raise StreamViolation(stream_id, ErrorCode.PROTOCOL_ERROR, str(exc)) from None

    def _open_remote(
        self, stream_id: int, decoded: _Decoded, end_stream: bool, self_dependent: bool,
        events: list[Event],
    ) -> None:
        if self._goaway_last is not None and stream_id > self._goaway_last:
            self._remember_quiet(stream_id)  # section 6.8: ignored after our GOAWAY
            return
        if self_dependent:
            raise MalformedHeaders("stream depends on itself")
        if self._inbound_open >= self._limits.max_concurrent_streams:
            raise StreamViolation(
                stream_id, ErrorCode.REFUSED_STREAM, "MAX_CONCURRENT_STREAMS reached"
            )
        headers, never_indexed = decoded.check(request_headers)
        stream = Stream(
            stream_id, TRANSITIONS[(IDLE, RECV_HEADERS)], self._peer_initial_window,
            self._limits.initial_window,
        )
        stream.headers_received = True
        self._streams[stream_id] = stream
        self._inbound_open += 1
        self._last_processed = stream_id
        events.append(RequestReceived(stream_id, headers, end_stream, never_indexed))
        if end_stream:
            self._apply_input(stream, RECV_END_STREAM)

    def _known_block(
        self, stream: Stream, decoded: _Decoded, end_stream: bool, self_dependent: bool,
        events: list[Event],
    ) -> None:
        stream_id = stream.stream_id
        if (stream.state, RECV_HEADERS) not in TRANSITIONS:
            self._refuse(stream_id, stream, RECV_HEADERS)
        if self_dependent:
            raise MalformedHeaders("stream depends on itself")
        if not stream.headers_received:
            headers, never_indexed, informational = decoded.check(response_headers)
            if informational:
                if end_stream:
                    raise MalformedHeaders("informational response with END_STREAM")
                return  # 1xx responses are dropped; the final one follows
            stream.headers_received = True
            events.append(ResponseReceived(stream_id, headers, end_stream, never_indexed))
        else:
            if not end_stream:
                raise MalformedHeaders("trailers without END_STREAM")
            headers, never_indexed = decoded.check(trailer_headers)
            events.append(TrailersReceived(stream_id, headers, never_indexed))
        if end_stream:
            self._apply_input(stream, RECV_END_STREAM)

    # -- stream table ---------------------------------------------------------------------

    def _refuse(self, stream_id: int, stream: Stream | None, event: StreamInput) -> None:
        """Answer a frame the table refuses; a forgotten stream is CLOSED, an unused one IDLE."""
        if stream is not None:
            state = stream.state
        elif self._is_idle(stream_id) or self._skipped(stream_id):
            state = IDLE  # never opened: only HEADERS (and PRIORITY) may come
        else:
            state = CLOSED
        if (state, event) in TRANSITIONS:
            return
        verdict = refusal(state, event)
        if verdict is None:  # only receiving inputs come here
            raise AssertionError(event)
        connection_wide, code = verdict
        if connection_wide:
            raise ConnectionViolation(code, f"{event.name} on never opened stream {stream_id}")
        if state is CLOSED and stream_id in self._quiet:
            return
        raise StreamViolation(stream_id, code, f"{event.name} on a stream in {state.name}")

    def _apply_input(self, stream: Stream, event: StreamInput) -> None:
        new = TRANSITIONS[(stream.state, event)]
        if new is CLOSED:
            self._forget(stream)
        else:
            stream.state = new

    def _forget(self, stream: Stream) -> None:
        stream_id = stream.stream_id
        if self._streams.pop(stream_id, None) is None:
            return
        stream.state = CLOSED
        if stream_id & 1 == self._remote_parity:
            self._inbound_open -= 1
        else:
            self._outbound_open -= 1

    def _remember_quiet(self, stream_id: int) -> None:
        quiet = self._quiet
        quiet[stream_id] = None
        if len(quiet) > self._limits.closed_stream_memory:
            del quiet[next(iter(quiet))]

    def _note_opened(self, stream_id: int, expected: int, remote: bool) -> None:
        if stream_id > expected:
            gaps = self._gaps[0 if remote else 1]
            gaps.append((expected, stream_id - 2))
            if len(gaps) > _MAX_GAPS:
                del gaps[0]

    def _skipped(self, stream_id: int) -> bool:
        gaps = self._gaps[0 if stream_id & 1 == self._remote_parity else 1]
        return any(low <= stream_id <= high for low, high in gaps)

    def _is_idle(self, stream_id: int) -> bool:
        if stream_id & 1 == self._remote_parity:
            return stream_id > self._highest_remote
        return stream_id >= self._next_local

    @staticmethod
    def _peer_may_send(stream: Stream) -> bool:
        return stream.state is OPEN or stream.state is HALF_CLOSED_LOCAL
