"""Daemon lifecycle over real processes: sockets, drain on SIGTERM, reload on SIGHUP, sd_notify."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from tests.conftest import ROOT, Daemon, Upstream, basic_config, wait_serving, write_config


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError("condition not met in time")


def test_socket_created_with_mode_and_parent_folder(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    sock = short_dir / "nested" / "run" / "app.sock"
    daemon_factory(basic_config(short_dir, upstream, socket=str(sock), mode="0600"))
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_stale_socket_file_is_replaced(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / "app.sock"))
    stale.close()  # the file stays, nobody listens
    d = daemon_factory(basic_config(short_dir, upstream))
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"


def test_live_socket_is_refused_with_a_clear_error(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    first = daemon_factory(basic_config(short_dir, upstream))
    second = daemon_factory(basic_config(short_dir, upstream), wait=False)
    assert second.wait(15) == 1
    errors = [orjson.loads(line) for line in second.log_lines()]
    assert any("in use" in e["msg"] and first.socket in e["msg"] for e in errors)
    with first.channel() as ch:  # the running daemon is untouched
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"


def test_sigterm_lets_in_flight_call_finish_then_exits_clean(
    daemon: Daemon, upstream: Upstream
) -> None:
    with daemon.channel() as ch:
        future = ch.unary_unary("/test.Echo/Slow").future(
            b"done", metadata=[("sleep-ms", "800")], timeout=10)
        _wait_for(lambda: bool(upstream.seen))
        daemon.signal(signal.SIGTERM)
        assert future.result(timeout=10) == b"done"
    assert daemon.wait(15) == 0
    assert not os.path.exists(daemon.socket)


def test_sigterm_refuses_new_calls_while_draining(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["drain_timeout"] = "5s"
    d = daemon_factory(config)
    with d.channel() as ch:
        slow = ch.unary_unary("/test.Echo/Slow").future(
            b"x", metadata=[("sleep-ms", "1500")], timeout=10)
        _wait_for(lambda: bool(upstream.seen))
        d.signal(signal.SIGTERM)
        time.sleep(0.3)
        with grpc.insecure_channel(f"unix:{d.socket}") as fresh, \
                pytest.raises(grpc.RpcError) as err:
            fresh.unary_unary("/test.Echo/Unary")(b"late", timeout=2)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert slow.result(timeout=10) == b"x"
    assert d.wait(15) == 0


def test_drain_timeout_bounds_shutdown(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["drain_timeout"] = "300ms"
    d = daemon_factory(config)
    with d.channel() as ch:
        future = ch.unary_unary("/test.Echo/Slow").future(
            b"x", metadata=[("sleep-ms", "10000")], timeout=20)
        _wait_for(lambda: bool(upstream.seen))
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(10) == 0
        assert time.monotonic() - started < 5
        with pytest.raises(grpc.RpcError):
            future.result(timeout=10)
    assert not os.path.exists(d.socket)


def test_sighup_with_valid_config_routes_new_calls_to_new_target(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    upstream_factory: Callable[[str], Upstream],
) -> None:
    old, new = upstream_factory("old"), upstream_factory("new")
    d = daemon_factory(basic_config(short_dir, old))
    with d.channel() as ch:
        in_flight = ch.unary_unary("/test.Echo/Slow").future(
            b"old-call", metadata=[("sleep-ms", "1000")], timeout=10)
        _wait_for(lambda: bool(old.seen))
        write_config(d.config_path, basic_config(short_dir, new))
        d.signal(signal.SIGHUP)
        _wait_for(lambda: any('"reloaded"' in ln for ln in d.log_lines()))
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
        assert [s.method for s in new.seen] == ["Unary"]
        assert in_flight.result(timeout=10) == b"old-call"
    assert d.process.poll() is None


def test_sighup_with_invalid_config_keeps_running_config(
    daemon: Daemon, upstream: Upstream
) -> None:
    daemon.config_path.write_text("listeners: []\ntargets: {up: {kind: nope}}\n")
    daemon.signal(signal.SIGHUP)
    _wait_for(lambda: any("reload refused" in ln for ln in daemon.log_lines()))
    refused = [orjson.loads(ln) for ln in daemon.log_lines() if "reload refused" in ln]
    assert len(refused) == 1
    assert refused[0]["level"] == "error"
    assert "targets.up.kind" in refused[0]["msg"]
    with daemon.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"still", timeout=5) == b"still"


def test_sighup_can_add_a_listener(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    d = daemon_factory(config)
    second = str(short_dir / "second.sock")
    config["listeners"].append({"name": "second", "socket": second, "default_target": "up"})
    write_config(d.config_path, config)
    d.signal(signal.SIGHUP)
    wait_serving(second)
    with d.channel(second) as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"two", timeout=5) == b"two"
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"one", timeout=5) == b"one"


def test_invalid_config_at_start_exits_1_naming_the_key(short_dir: Path) -> None:
    path = short_dir / "bad.yaml"
    path.write_text("listeners: [{name: app, socket: relative.sock}]\nbogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert result.returncode == 1
    assert "listeners[0].socket: must be an absolute path" in result.stderr
    assert "bogus: unknown key" in result.stderr


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(10)

    def next(self, prefix: str) -> tuple[str, float]:
        """The next message starting with `prefix` (skipping others), and when it came."""
        while True:
            message = self.sock.recv(4096).decode()
            if message.startswith(prefix):
                return message, time.monotonic()


@pytest.fixture
def notify(short_dir: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(short_dir / "notify.sock")
    yield listener
    listener.sock.close()


def test_sd_notify_ready_reloading_stopping(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    notify: NotifySocket,
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream), env={"NOTIFY_SOCKET": notify.path})
    assert notify.next("READY=1")[0] == "READY=1"
    d.signal(signal.SIGHUP)
    assert notify.next("RELOADING=1")[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert notify.next("READY=1")[0] == "READY=1"
    d.signal(signal.SIGTERM)
    assert notify.next("STOPPING=1")[0] == "STOPPING=1"
    assert d.wait() == 0


def test_sd_notify_watchdog_pings_at_half_the_interval(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    notify: NotifySocket,
) -> None:
    daemon_factory(basic_config(short_dir, upstream),
                   env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
    times = [notify.next("WATCHDOG=1")[1] for _ in range(6)]
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    median = gaps[len(gaps) // 2]
    assert 0.1 < median < 0.35  # every WATCHDOG_USEC/2 = 200 ms


def test_sighup_with_a_producer_config_the_client_rejects_keeps_running_config(
    daemon: Daemon, short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["events"] = {
        "kind": "kafka", "bootstrap_servers": ["127.0.0.1:9"],
        "producer": {"config": {"no.such.librdkafka.setting": "s3cret-value"}},
    }
    write_config(daemon.config_path, config)
    daemon.signal(signal.SIGHUP)
    _wait_for(lambda: any("reload refused" in ln for ln in daemon.log_lines()))
    assert "s3cret-value" not in daemon.log_path.read_text()
    with daemon.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"still", timeout=5) == b"still"
    assert daemon.process.poll() is None
