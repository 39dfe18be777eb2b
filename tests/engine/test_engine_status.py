"""`GET /status` per listener: the engine's caller connections and streams, over real sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson

from tests.conftest import Daemon, Upstream, basic_config, eventually, free_port

# A channel of its own: without it grpc shares one connection between channels to a target.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _listener(d: Daemon) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{d.admin}/status", timeout=5) as reply:
        [entry] = orjson.loads(reply.read())["listeners"]
    return dict(entry)


def test_status_counts_caller_connections_and_held_streams_until_they_close(
        daemon_factory: Callable[..., Daemon], upstream: Upstream, short_dir: Path) -> None:
    config = basic_config(short_dir, upstream, max_connections=7)
    config["admin"] = {"address": f"127.0.0.1:{free_port()}"}
    d = daemon_factory(config)
    with contextlib.ExitStack() as channels:
        calls = []
        for held in (3, 2):
            ch = channels.enter_context(
                grpc.insecure_channel(f"unix:{d.socket}", options=_OWN_CONNECTION))
            hold = ch.unary_unary("/test.Echo/Hold")
            calls += [hold.future(b"%d" % i, timeout=20) for i in range(held)]
        eventually(lambda: len(upstream.seen) == 5)

        entry = eventually(lambda: _listener(d))  # the admin endpoint starts after the socket
        peers = entry.pop("peers")
        assert entry == {"name": "app", "socket": d.socket, "mode": "0660",
                         "connections": 2, "streams": 5, "max_connections": 7,
                         "draining": False}
        # Each connection with the kernel's credentials of the process that opened it.
        assert sorted(p["streams"] for p in peers) == [2, 3]
        assert {(p["uid"], p["gid"], p["pid"]) for p in peers} == {
            (os.geteuid(), os.getegid(), os.getpid())}

        upstream.release.set()
        assert [c.result() for c in calls] == [b"0", b"1", b"2", b"0", b"1"]
    eventually(lambda: (_listener(d)["connections"], _listener(d)["streams"]) == (0, 0))


def test_status_shows_the_listener_draining_while_sigterm_waits_for_a_held_call(
        daemon_factory: Callable[..., Daemon], upstream: Upstream, short_dir: Path) -> None:
    config = basic_config(short_dir, upstream)
    config["admin"] = {"address": f"127.0.0.1:{free_port()}"}
    config["drain_timeout"] = "20s"
    d = daemon_factory(config)
    eventually(lambda: _listener(d))
    with grpc.insecure_channel(f"unix:{d.socket}") as ch:
        call = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=20)
        eventually(lambda: upstream.seen)
        d.signal(signal.SIGTERM)
        d.wait_log('"stopping"')
        assert eventually(lambda: _listener(d)["draining"]) is True
        assert _listener(d)["streams"] == 1
        upstream.release.set()
        assert call.result() == b"x"
    assert d.wait() == 0


def test_the_status_table_shows_connections_of_the_cap_streams_and_draining() -> None:
    from sidecar.telemetry.status_table import render

    data = {"version": "1", "uptime_s": 3.0, "in_flight": 2, "config": "/c.yaml",
            "listeners": [{"name": "app", "socket": "/run/a.sock", "mode": "0660",
                           "connections": 3, "streams": 2, "max_connections": 1000,
                           "draining": True},
                          {"name": "old", "socket": "/run/b.sock", "mode": "0600"}],
            "targets": {}}
    lines = render(data, as_json=False).splitlines()
    header = next(line for line in lines if line.startswith("name") and "socket" in line)
    assert header.split() == ["name", "socket", "mode", "connections", "streams", "peer",
                              "uids"]
    assert lines[lines.index(header) + 1].split() == [
        "app", "/run/a.sock", "0660", "3/1000", "draining", "2", "-"]
    assert lines[lines.index(header) + 2].split() == ["old", "/run/b.sock", "0600", "-", "-",
                                                      "-"]


def test_a_status_message_is_clipped_to_fit_any_caller() -> None:
    from sidecar.engine.status_block import MAX_MESSAGE, error_block

    block = dict(error_block(5, "unknown target " + "n" * 100_000, False))
    assert block[b"grpc-status"] == b"5"
    assert len(block[b"grpc-message"]) == MAX_MESSAGE
    assert block[b"grpc-message"].endswith(b"...")
