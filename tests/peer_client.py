"""Unary gRPC calls made by a child process under another uid and gid, over a real socket.

The daemon learns who is calling from the kernel (SO_PEERCRED of the connection), so a
test that means "uid 1000 calls" must have a process of uid 1000 connect. The child is a
fresh interpreter started by `setpriv` as that uid and gid, with no supplementary groups
(needs root and setpriv: `needs_root` skips without them; subprocess's own `user=` cannot
exec an interpreter installed under /root here, setpriv can); requests and replies cross
as bytes (the child needs grpc only). A listener socket
such a child can open needs mode "0666" and a folder it can traverse (`open_to_all`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SETPRIV = shutil.which("setpriv")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None,
    reason="calls under another uid need root and setpriv (util-linux): the child process "
           "drops to that uid")

UID, GID = 1000, 1000  # the caller the tests map
OTHER_UID, OTHER_GID = 1001, 1001  # a caller no rule maps

_CHILD = r"""
import json, sys
import grpc
spec = json.load(sys.stdin)
out = []
def text(v):
    return v.hex() if isinstance(v, bytes) else v
with grpc.insecure_channel("unix:" + spec["socket"]) as channel:
    for c in spec["calls"]:
        metadata = [(k, bytes.fromhex(v) if k.endswith("-bin") else v) for k, v in c["metadata"]]
        method = channel.unary_unary(c["method"])
        try:
            reply, call = method.with_call(bytes.fromhex(c["request"]), metadata=metadata,
                                           timeout=c["timeout"])
            out.append({"code": "OK", "details": "", "reply": reply.hex(),
                        "trailers": [[k, text(v)] for k, v in call.trailing_metadata() or ()]})
        except grpc.RpcError as e:
            out.append({"code": e.code().name, "details": e.details() or "", "reply": "",
                        "trailers": [[k, text(v)] for k, v in e.trailing_metadata() or ()]})
print(json.dumps(out))
"""


@dataclass
class Call:
    """One unary call: the method's full name, the request message as bytes, metadata
    (a `-bin` value as bytes)."""

    method: str
    request: bytes = b""
    metadata: Sequence[tuple[str, str | bytes]] = ()
    timeout: float = 10.0


@dataclass
class Answer:
    code: str  # grpc.StatusCode name
    details: str
    reply: bytes
    trailers: dict[str, str] = field(default_factory=dict)


def open_to_all(folder: Path) -> None:
    """Let any uid reach sockets in `folder` (the socket itself needs mode "0666")."""
    folder.chmod(0o755)


def call_as(uid: int, gid: int, socket: str, calls: Sequence[Call]) -> list[Answer]:
    """Make `calls` in order on one channel from a process running as `uid`:`gid`."""
    spec = {"socket": socket, "calls": [
        {"method": c.method, "request": c.request.hex(), "timeout": c.timeout,
         "metadata": [[k, v.hex() if isinstance(v, bytes) else v] for k, v in c.metadata]}
        for c in calls]}
    assert SETPRIV is not None
    result = subprocess.run(
        [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", sys.executable,
         "-c", _CHILD], input=json.dumps(spec), capture_output=True, text=True, timeout=60,
        cwd="/", env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert result.returncode == 0, result.stderr
    return [Answer(a["code"], a["details"], bytes.fromhex(a["reply"]), dict(a["trailers"]))
            for a in json.loads(result.stdout)]
