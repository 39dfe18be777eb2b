"""Resolving a target's host to the addresses of its endpoints (the pool's resolver seam).

A resolver is an async function `(host, port) -> ["ip:port", ...]`; the pool calls it at
start and again once the target's `pool.dns_ttl` has passed. Tests pass their own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's TCP addresses from getaddrinfo, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(join(str(info[4][0]), port) for info in infos))


def is_literal(host: str) -> bool:
    """An IP address needs no resolving."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
