"""A target's address parsed, and its host resolved to the addresses of its endpoints
(the pool's resolver seam).

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


def parse_address(address: str) -> tuple[str | None, str, int]:
    """(unix path, host, port) of a gRPC target address: `unix:///p`, `unix:/p`, `unix:p`,
    `unix-abstract:name`, `dns:///host:port`, `host:port`, `[v6]:port`, or the first
    endpoint of an `ipv4:`/`ipv6:` list."""
    if address.startswith("unix-abstract:"):
        return "\0" + address[14:], "localhost", 0
    if address.startswith("unix:"):
        rest = address[5:]
        if rest.startswith("//"):
            rest = rest[2:]
        return rest, "localhost", 0
    statics = static_endpoints(address)
    if statics:
        first, number = split(statics[0])
        return None, first, number
    if address.startswith("dns:"):
        address = address[4:].lstrip("/")
        if "/" in address:  # dns://resolver/host:port: the resolver is not used
            address = address.split("/", 1)[1]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return None, host.strip("[]"), int(port)


def static_endpoints(address: str) -> list[str]:
    """The endpoints of gRPC's `ipv4:a[:port],b[:port]` and `ipv6:[a]:port,...` forms (port
    443 when left out, as gRPC's naming says); [] for any other form."""
    scheme, _, rest = address.partition(":")
    if scheme not in ("ipv4", "ipv6") or not rest:
        return []
    endpoints = []
    for item in rest.split(","):
        if scheme == "ipv4":
            host, _, port = item.partition(":")
        elif item.startswith("["):
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, port = item, ""
        if not is_literal(host) or not (port or "443").isdigit():
            raise ValueError(f"address {address!r}: {item!r} is not an {scheme} address")
        endpoints.append(join(host, int(port or "443")))
    return endpoints
