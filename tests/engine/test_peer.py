"""engine/peer.py: the kernel's credentials of a connection's other end (SO_PEERCRED)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from sidecar.engine.peer import Peer, peer_of


class Transport:
    """What peer_of asks of an asyncio transport."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self._sock if name == "socket" else None


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")
def test_a_unix_socket_peer_is_this_process_uid_gid_and_pid() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX)
    with ours, theirs:
        assert peer_of(Transport(ours)) == Peer(os.geteuid(), os.getegid(), os.getpid())


def test_a_tcp_connection_has_no_peer_credentials() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as client:
        assert peer_of(Transport(client)) is None


def test_a_transport_without_a_socket_has_no_peer() -> None:
    assert peer_of(Transport(None)) is None


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="SO_PEERCRED is Linux's")
def test_uvloops_accepted_unix_connection_reports_its_peer(short_dir: Path) -> None:
    """Through uvloop's transport (the daemon's loop), as the listener reads it."""
    import uvloop

    async def accept_one() -> Peer | None:
        seen: asyncio.Future[Peer | None] = asyncio.get_running_loop().create_future()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                seen.set_result(peer_of(transport))

        path = str(short_dir / "p.sock")
        server = await asyncio.get_running_loop().create_unix_server(Accept, path)
        async with server:
            _, writer = await asyncio.open_unix_connection(path)
            peer = await asyncio.wait_for(seen, 5)
            writer.close()
            await writer.wait_closed()
        return peer

    assert uvloop.run(accept_one()) == Peer(os.geteuid(), os.getegid(), os.getpid())
