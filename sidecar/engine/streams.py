"""Stream states of RFC 9113 section 5.1 as one explicit transition table (push is never on).

`TRANSITIONS[(state, input)]` is the next state; a pair missing from it is refused, with the
error `refusal()` names: a stream or connection error for what the peer sent, StreamStateError
for what our caller tried to send. Streams are forgotten on reaching CLOSED; a frame for a
forgotten stream is looked up as (CLOSED, input), so late frames get the RFC's treatment.
"""

from __future__ import annotations

from enum import IntEnum

from sidecar.engine.frames import ErrorCode


class StreamState(IntEnum):
    """States of section 5.1 without the reserved ones."""

    IDLE = 0
    OPEN = 1
    HALF_CLOSED_LOCAL = 2
    HALF_CLOSED_REMOTE = 3
    CLOSED = 4


class StreamInput(IntEnum):
    """What happens to a stream: frames we send (SEND_*) or receive (RECV_*)."""

    SEND_HEADERS = 0
    SEND_DATA = 1
    SEND_END_STREAM = 2
    SEND_RST_STREAM = 3
    RECV_HEADERS = 4
    RECV_DATA = 5
    RECV_END_STREAM = 6
    RECV_RST_STREAM = 7
    RECV_WINDOW_UPDATE = 8


IDLE = StreamState.IDLE
OPEN = StreamState.OPEN
HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
CLOSED = StreamState.CLOSED

SEND_HEADERS = StreamInput.SEND_HEADERS
SEND_DATA = StreamInput.SEND_DATA
SEND_END_STREAM = StreamInput.SEND_END_STREAM
SEND_RST_STREAM = StreamInput.SEND_RST_STREAM
RECV_HEADERS = StreamInput.RECV_HEADERS
RECV_DATA = StreamInput.RECV_DATA
RECV_END_STREAM = StreamInput.RECV_END_STREAM
RECV_RST_STREAM = StreamInput.RECV_RST_STREAM
RECV_WINDOW_UPDATE = StreamInput.RECV_WINDOW_UPDATE

TRANSITIONS: dict[tuple[StreamState, StreamInput], StreamState] = {
    (IDLE, SEND_HEADERS): OPEN,
    (IDLE, RECV_HEADERS): OPEN,
    (OPEN, SEND_HEADERS): OPEN,
    (OPEN, SEND_DATA): OPEN,
    (OPEN, SEND_END_STREAM): HALF_CLOSED_LOCAL,
    (OPEN, SEND_RST_STREAM): CLOSED,
    (OPEN, RECV_HEADERS): OPEN,
    (OPEN, RECV_DATA): OPEN,
    (OPEN, RECV_END_STREAM): HALF_CLOSED_REMOTE,
    (OPEN, RECV_RST_STREAM): CLOSED,
    (OPEN, RECV_WINDOW_UPDATE): OPEN,
    (HALF_CLOSED_LOCAL, SEND_RST_STREAM): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_HEADERS): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_DATA): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_END_STREAM): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_RST_STREAM): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_WINDOW_UPDATE): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_REMOTE, SEND_HEADERS): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_DATA): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_END_STREAM): CLOSED,
    (HALF_CLOSED_REMOTE, SEND_RST_STREAM): CLOSED,
    (HALF_CLOSED_REMOTE, RECV_RST_STREAM): CLOSED,
    (HALF_CLOSED_REMOTE, RECV_WINDOW_UPDATE): HALF_CLOSED_REMOTE,
    # Closed (section 5.1): WINDOW_UPDATE or RST_STREAM may still be in flight; discard them.
    # Nothing may be sent on a closed stream: reset_stream() of one sends nothing.
    (CLOSED, RECV_RST_STREAM): CLOSED,
    (CLOSED, RECV_WINDOW_UPDATE): CLOSED,
}

_RECEIVING = frozenset(
    {RECV_HEADERS, RECV_DATA, RECV_END_STREAM, RECV_RST_STREAM, RECV_WINDOW_UPDATE}
)


def refusal(state: StreamState, event: StreamInput) -> tuple[bool, int] | None:
    """How a pair missing from TRANSITIONS is refused.

    None: a local misuse (our caller sent out of turn), raised as StreamStateError.
    (True, code): a connection error, (False, code): a stream error, for what the peer sent.
    """
    if event not in _RECEIVING:
        return None
    if state is IDLE:
        # Anything but HEADERS (or PRIORITY, handled before the table) on an idle stream.
        return True, ErrorCode.PROTOCOL_ERROR
    return False, ErrorCode.STREAM_CLOSED


class Stream:
    """Per-stream state and both flow-control windows."""

    __slots__ = (
        "delivered",
        "headers_received",
        "recv_window",
        "send_window",
        "state",
        "stream_id",
        "unacked",
    )

    def __init__(self, stream_id: int, state: StreamState, send_window: int, recv_window: int):
        self.stream_id = stream_id
        self.state = state
        self.send_window = send_window
        """What we may still send before the peer's WINDOW_UPDATE (may go negative)."""
        self.recv_window = recv_window
        """What the peer may still send us, as the peer sees it."""
        self.delivered = 0
        """Flow-controlled bytes handed to the application and not yet acknowledged."""
        self.unacked = 0
        """Acknowledged bytes not yet returned to the peer by a WINDOW_UPDATE (batched)."""
        self.headers_received = False
        """The request or final response header block arrived: the next block is trailers."""
