"""Who is on the other end of a caller connection, as the kernel tells it (SO_PEERCRED).

Read once, when the connection is accepted: the uid, gid and pid of the process that
called connect(2) on the listener's Unix socket. No caller can forge them; what they do
not prove (a pid reused later, processes sharing a uid) is in docs/security.md.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SO_PEERCRED: int | None = getattr(socket, "SO_PEERCRED", None)  # Linux


@dataclass(frozen=True, slots=True)
class Peer:
    """The connecting process's credentials at connect time."""

    uid: int
    gid: int
    pid: int


def peer_of(transport: Any) -> Peer | None:
    """The peer of an accepted connection; None when it is not a Unix socket or the
    kernel does not say (another platform, a socket already gone)."""
    if _SO_PEERCRED is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(uid=uid, gid=gid, pid=pid)
