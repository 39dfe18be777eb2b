"""Connection lifecycle as an explicit transition table (a server first awaits the preface)."""

from __future__ import annotations

from enum import IntEnum


class ConnectionState(IntEnum):
    """Where a connection is in its life."""

    AWAIT_PREFACE = 0
    AWAIT_SETTINGS = 1
    OPEN = 2
    CLOSED = 3


class ConnectionInput(IntEnum):
    """What moves a connection along."""

    RECV_PREFACE = 0
    RECV_SETTINGS = 1
    RECV_FRAME = 2
    CLOSE = 3


AWAIT_PREFACE = ConnectionState.AWAIT_PREFACE
AWAIT_SETTINGS = ConnectionState.AWAIT_SETTINGS
OPEN = ConnectionState.OPEN
CLOSED = ConnectionState.CLOSED

# A pair missing here is a PROTOCOL_ERROR connection error: section 3.4 makes a SETTINGS frame
# (not an ACK) the first frame of either side. CLOSED takes no input at all.
CONNECTION_TRANSITIONS: dict[tuple[ConnectionState, ConnectionInput], ConnectionState] = {
    (AWAIT_PREFACE, ConnectionInput.RECV_PREFACE): AWAIT_SETTINGS,
    (AWAIT_PREFACE, ConnectionInput.CLOSE): CLOSED,
    (AWAIT_SETTINGS, ConnectionInput.RECV_SETTINGS): OPEN,
    (AWAIT_SETTINGS, ConnectionInput.CLOSE): CLOSED,
    (OPEN, ConnectionInput.RECV_SETTINGS): OPEN,
    (OPEN, ConnectionInput.RECV_FRAME): OPEN,
    (OPEN, ConnectionInput.CLOSE): CLOSED,
}
