"""`sidecar status` shows who is connected to each listener, from /status's `peers`."""

from __future__ import annotations

from typing import Any

from sidecar.telemetry.status_table import render


def _status(peers: list[dict[str, Any]] | None) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "app", "socket": "/run/sidecar/app.sock",
                                "mode": "0660", "connections": 3, "max_connections": 1000,
                                "streams": 1}
    if peers is not None:
        listener["peers"] = peers
    return {"version": "0", "uptime_s": 1.0, "in_flight": 0, "config": "c.yaml",
            "listeners": [listener], "targets": {}}


def test_the_listener_row_counts_connections_per_peer_uid() -> None:
    peers = [{"uid": 1000, "gid": 1000, "pid": 7, "user_id": "svc", "streams": 1},
             {"uid": 1000, "gid": 1000, "pid": 8, "user_id": "svc", "streams": 0},
             {"uid": 0, "gid": 0, "pid": 9, "user_id": None, "streams": 0}]
    lines = render(_status(peers), as_json=False).splitlines()
    header, row = lines[3], lines[4]
    assert header.split()[-2:] == ["peer", "uids"]
    assert row.endswith("0, 1000 x2")


def test_a_daemon_without_peers_shows_a_dash() -> None:
    row = render(_status(None), as_json=False).splitlines()[4]
    assert row.endswith(" -")
