"""A Node.js (@grpc/grpc-js) client calls the daemon over its Unix socket.

tests/node_client/client.js runs the checks and prints one JSON line; this test
starts the daemon and the echo upstream, runs it and asserts each result. Skipped
when node or npm is missing, or when `npm ci` cannot install the pinned packages
(no registry).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Daemon, Upstream

CLIENT_DIR = ROOT / "tests" / "node_client"
NPM_CI_TIMEOUT = 90  # under pytest-timeout's 120 s, which covers fixture setup
# npm's own retry back-off (10 s then 60 s by default) would spend over a minute
# before giving up on an unreachable registry; these keep its retries but fail in
# seconds, and cap a stalled request, so a machine without a registry skips quickly.
NPM_CI = ["ci", "--no-audit", "--no-fund", "--fetch-retry-mintimeout=1000",
          "--fetch-retry-maxtimeout=5000", "--fetch-timeout=30000"]
CLIENT_TIMEOUT = 30


@pytest.fixture(scope="session")
def node_client() -> Path:
    """tests/node_client with its locked packages installed; the path to client.js."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not on PATH: the Node.js client check needs Node 18+ and npm")
    try:
        result = subprocess.run(
            [npm, *NPM_CI], cwd=CLIENT_DIR,
            capture_output=True, text=True, timeout=NPM_CI_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm ci` in {CLIENT_DIR} took over {NPM_CI_TIMEOUT}s (registry unreachable?)")
    if result.returncode != 0:
        head = "\n".join((result.stderr or result.stdout).strip().splitlines()[:4])
        pytest.skip(f"`npm ci` in {CLIENT_DIR} failed (no npm registry?):\n{head}")
    return CLIENT_DIR / "client.js"


def run_client(client: Path, socket: str) -> dict[str, Any]:
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, str(client), socket], cwd=CLIENT_DIR,
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False,
    )
    assert result.returncode == 0, f"client.js exited {result.returncode}:\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got:\n{result.stdout}\n{result.stderr}"
    results: dict[str, Any] = json.loads(lines[0])
    failed = {name: r["error"] for name, r in results.items() if "error" in r}
    assert not failed, f"checks that could not run: {failed}"
    return results


def test_node_grpc_js_client_over_unix_socket(node_client: Path, daemon: Daemon,
                                             upstream: Upstream) -> None:
    results = run_client(node_client, daemon.socket)

    assert results["health"] == {"status": "SERVING"}

    unary = results["unary"]
    assert base64.b64decode(unary["echoed_b64"]) == base64.b64decode(unary["sent_b64"])
    assert len(base64.b64decode(unary["sent_b64"])) == 512
    assert unary["correlation_id"] == unary["sent_correlation_id"] == "node-order-42"
    assert unary["upstream_header"] == "present"
    unary_seen = [s for s in upstream.seen if s.method == "Unary"]
    assert len(unary_seen) == 1
    assert unary_seen[0].metadata["user-id"] == "node-alice"
    assert unary_seen[0].metadata["correlation-id"] == "node-order-42"
    for dropped in ("x-user-id", "x-correlation-id"):
        assert dropped not in unary_seen[0].metadata

    stream = results["server_stream"]
    assert stream["count"] == 5
    assert stream["indexes"] == [0, 1, 2, 3, 4]
    assert stream["payloads"] == ["node-payload"] * 5

    # The upstream's status code and details come back unchanged.
    assert results["fail"] == {"code": "NOT_FOUND", "details": "upstream says no"}
    assert upstream.seen[-1].method == "Fail"
    assert upstream.seen[-1].metadata["fail-code"] == "NOT_FOUND"

    # The daemon's own error for an unknown target names it.
    http = results["http_proxy_unknown_target"]
    assert http["code"] == "NOT_FOUND"
    assert "nope" in http["details"]
