"""`sidecar status`: read /status from the admin endpoint and show it as a table."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson


async def fetch_status(address: str) -> dict[str, Any]:
    """GET /status from `host:port` or `unix:/path`."""
    if address.startswith("unix:"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=address[5:])
        url = "http://localhost/status"
    else:
        connector = aiohttp.TCPConnector()
        url = f"http://{address}/status"
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                session.get(url) as response:
            response.raise_for_status()
            data: dict[str, Any] = orjson.loads(await response.read())
            return data
    except aiohttp.ClientError as e:
        raise OSError(str(e)) from e


def render(data: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    build = f" ({data['build']})" if "build" in data else ""  # an older daemon has none
    lines = [f"sidecar {data['version']}{build}  up {data['uptime_s']:.0f}s  "
             f"in flight {data['in_flight']}  config {data['config']}", "", "LISTENERS"]
    lines += _table(["name", "socket", "mode", "connections", "streams", "peer uids"],
                    [[ls["name"], ls["socket"], ls["mode"], _connections(ls),
                      str(ls.get("streams", "-")), _peer_uids(ls)]
                     for ls in data["listeners"]])
    lines += ["", "TARGETS"]
    rows = [
        [name, t["kind"], t.get("address", "-"), "yes" if t["healthy"] else "NO",
         f"{t['breaker']['state']} {t['breaker']['for_s']:.0f}s", str(t["in_flight"]),
         f"{t['retry_budget']:.0f}", str(t["counters"]["requests"]),
         str(t["counters"]["retries"]), str(t["counters"]["shed"]),
         str(t["counters"]["circuit_rejected"]), t["last_error"] or "-"]
        for name, t in data["targets"].items()
    ]
    lines += _table(["name", "kind", "address", "healthy", "breaker", "in-flight", "budget",
                     "requests", "retries", "shed", "rejected", "last error"], rows)
    spools = [[name, str(s["messages"]), f"{s['bytes']}/{s['max_bytes']}",
               f"{s['oldest_age_s']:.1f}s", str(s["held"]), str(s["spooled"]),
               str(s["drained"]), str(s["failed"]), s["dir"]]
              for name, t in data["targets"].items() if (s := t.get("spool")) is not None]
    if spools:
        lines += ["", "KAFKA SPOOLS"]
        lines += _table(["target", "messages", "bytes", "oldest", "held", "spooled",
                         "drained", "failed", "dir"], spools)
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _connections(listener: dict[str, Any]) -> str:
    """`3/1000`, `3/1000 draining`, or `-` from a daemon that does not report them."""
    if "connections" not in listener:
        return "-"
    text = f"{listener['connections']}/{listener.get('max_connections', '?')}"
    return f"{text} draining" if listener.get("draining") else text


def _peer_uids(listener: dict[str, Any]) -> str:
    """The uids of the processes connected (`1000 x2, 0`), or `-` when none are."""
    counts: dict[str, int] = {}
    for peer in listener.get("peers") or ():
        uid = "?" if peer.get("uid") is None else str(peer["uid"])
        counts[uid] = counts.get(uid, 0) + 1
    if not counts:
        return "-"
    return ", ".join(uid if n == 1 else f"{uid} x{n}" for uid, n in sorted(counts.items()))
