"""`listeners[].targets`: every way of naming a target outside it is refused, over the
real socket, before anything reaches the target; check-config refuses routes outside it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.config_loader import parse_config
from sidecar.errors import ConfigError
from tests.conftest import ROOT, Daemon, Upstream, basic_config, free_port, write_config
from tests.http_upstream import HttpUpstream


def _config(short_dir: Path, allowed: Upstream, other: Upstream,
            http: HttpUpstream) -> dict[str, Any]:
    config = basic_config(short_dir, allowed, targets=["up", "web-*"],
                          routes=[{"service": "test.*", "target": "up"}])
    config["targets"].update({
        "secret": {"kind": "grpc", "address": other.address},
        "web-a": {"kind": "http", "base_url": http.url},
        "billing": {"kind": "http", "base_url": http.url},
        "events": {"kind": "kafka", "bootstrap_servers": [f"127.0.0.1:{free_port()}"]},
    })
    return config


@pytest.fixture
def narrowed(daemon_factory: Callable[..., Daemon], short_dir: Path,
             upstream_factory: Callable[[str], Upstream],
             http_upstream: HttpUpstream) -> tuple[Daemon, Upstream, Upstream]:
    allowed, other = upstream_factory("allowed"), upstream_factory("other")
    return daemon_factory(_config(short_dir, allowed, other, http_upstream)), allowed, other


def _denied(call: Callable[[], Any]) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    return err.value.details() or ""


def test_sidecar_target_outside_the_list_is_denied_and_never_reaches_it(
        narrowed: tuple[Daemon, Upstream, Upstream]) -> None:
    d, allowed, other = narrowed
    with d.channel() as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        details = _denied(lambda: unary(b"x", metadata=[("sidecar-target", "secret")],
                                        timeout=5))
        assert unary(b"x", metadata=[("sidecar-target", "up")], timeout=5) == b"x"
    assert "'secret'" in details and "listener 'app'" in details
    assert other.seen == []
    assert allowed.calls("Unary") == 1


def test_a_name_outside_the_list_is_denied_whether_or_not_it_exists(
        narrowed: tuple[Daemon, Upstream, Upstream]) -> None:
    """So a caller cannot probe which targets exist beyond its own."""
    d, _, _ = narrowed
    with d.channel() as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        details = _denied(lambda: unary(b"x", metadata=[("sidecar-target", "nope")],
                                        timeout=5))
        with pytest.raises(grpc.RpcError) as err:  # allowed by the glob, but not configured
            unary(b"x", metadata=[("sidecar-target", "web-zzz")], timeout=5)
    assert "'nope'" in details
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_route_inside_the_list_still_serves(
        narrowed: tuple[Daemon, Upstream, Upstream]) -> None:
    d, allowed, _ = narrowed
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
    assert allowed.calls("Unary") == 1


def test_http_proxy_to_a_target_outside_the_list_is_denied_before_any_request(
        narrowed: tuple[Daemon, Upstream, Upstream], http_upstream: HttpUpstream) -> None:
    d, _, _ = narrowed
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.HttpProxyStub(ch)
        details = _denied(lambda: stub.Call(sidecar_pb2.HttpRequest(
            target="billing", method="GET", path="/echo"), timeout=5))
        assert http_upstream.received == []
        reply = stub.Call(sidecar_pb2.HttpRequest(target="web-a", method="GET", path="/echo"),
                          timeout=5)
    assert "'billing'" in details and "listener 'app'" in details
    assert reply.status == 200
    assert [r.path_qs for r in http_upstream.received] == ["/echo"]


def test_publisher_to_a_target_outside_the_list_is_denied(
        narrowed: tuple[Daemon, Upstream, Upstream]) -> None:
    d, _, _ = narrowed
    with d.channel() as ch:
        stub = sidecar_pb2_grpc.PublisherStub(ch)
        one = _denied(lambda: stub.Publish(sidecar_pb2.PublishRequest(
            target="events", topic="t", value=b"v"), timeout=5))
        batch = _denied(lambda: stub.PublishBatch(sidecar_pb2.PublishBatchRequest(
            target="events", topic="t", messages=[sidecar_pb2.BatchMessage(value=b"v")]),
            timeout=5))
    assert "'events'" in one and "'events'" in batch


def _check(short_dir: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = short_dir / "check.yaml"
    write_config(path, config)
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_check_config_refuses_a_route_or_default_target_outside_the_list(
        short_dir: Path) -> None:
    config = basic_config(short_dir, None, targets=["a*"], default_target="secret",
                          routes=[{"service": "x.*", "target": "alpha"},
                                  {"service": "y.*", "target": "secret"}])
    config["targets"] = {name: {"kind": "grpc", "address": "127.0.0.1:1"}
                         for name in ("alpha", "secret")}
    result = _check(short_dir, config)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "listeners[0].default_target: target 'secret' is not in listeners[0].targets, "
        "the listener's allow-list",
        "listeners[0].routes[1].target: target 'secret' is not in listeners[0].targets, "
        "the listener's allow-list",
    ]
    del config["listeners"][0]["default_target"]
    config["listeners"][0]["routes"].pop()
    assert _check(short_dir, config).returncode == 0


def test_an_empty_list_allows_no_target_and_an_absent_one_every_target() -> None:
    def listener(**keys: Any) -> dict[str, Any]:
        return {"listeners": [{"name": "app", "socket": "/tmp/x.sock", **keys}],
                "targets": {"up": {"kind": "grpc", "address": "127.0.0.1:1"}}}

    assert parse_config(listener()).listeners[0].targets is None
    assert parse_config(listener(targets=[])).listeners[0].targets == ()
    with pytest.raises(ConfigError) as err:
        parse_config(listener(targets=[], default_target="up"))
    assert err.value.problems == [
        "listeners[0].default_target: target 'up' is not in listeners[0].targets, "
        "the listener's allow-list"]
