"""Daemon lifecycle over real processes: sockets, drain on SIGTERM, reload on SIGHUP, sd_notify."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from sidecar.systemd import Notifier
from tests.conftest import (
    ROOT,
    Daemon,
    Upstream,
    basic_config,
    eventually,
    wait_serving,
    write_config,
)


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
    assert any("in use" in e["body"] and first.socket in e["body"] for e in errors)
    with first.channel() as ch:  # the running daemon is untouched
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"


def test_sigterm_lets_in_flight_call_finish_then_exits_clean(
    daemon: Daemon, upstream: Upstream
) -> None:
    with daemon.channel() as ch:
        future = ch.unary_unary("/test.Echo/Hold").future(b"done", timeout=30)
        eventually(lambda: upstream.seen)
        daemon.signal(signal.SIGTERM)
        daemon.wait_log('"stopping"')
        upstream.release.set()  # the call ends only now, after the daemon began to stop
        assert future.result(timeout=10) == b"done"
    assert daemon.wait(15) == 0
    assert not os.path.exists(daemon.socket)


def test_sigterm_refuses_new_calls_while_draining(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["drain_timeout"] = "60s"
    d = daemon_factory(config)
    with d.channel() as ch:
        held = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=60)
        eventually(lambda: upstream.seen)
        d.signal(signal.SIGTERM)
        d.wait_log('"stopping"')  # a call sent before the daemon saw the signal is served

        def refused() -> None:
            with grpc.insecure_channel(f"unix:{d.socket}") as fresh, \
                    pytest.raises(grpc.RpcError) as err:
                fresh.unary_unary("/test.Echo/Unary")(b"late", timeout=2)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE

        eventually(refused)  # a call racing the start of the drain may still be served
        reached = upstream.calls("Unary")
        refused()  # once draining, every new call is refused and never reaches the upstream
        assert upstream.calls("Unary") == reached
        # The held call keeps the daemon up until it is released.
        assert d.process.poll() is None and not held.done()
        upstream.release.set()
        assert held.result(timeout=10) == b"x"
    assert d.wait(15) == 0


def test_drain_timeout_bounds_shutdown(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["drain_timeout"] = "300ms"
    d = daemon_factory(config)
    with d.channel() as ch:
        future = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=60)
        eventually(lambda: upstream.seen)
        d.signal(signal.SIGTERM)
        # Hold never answers on its own: the daemon exits only because the drain is bounded.
        assert d.wait(30) == 0
        with pytest.raises(grpc.RpcError):
            future.result(timeout=10)
    eventually(lambda: upstream.seen[0].cancelled)  # the cut call ended upstream too
    assert not os.path.exists(d.socket)


def test_sighup_with_valid_config_routes_new_calls_to_new_target(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    upstream_factory: Callable[[str], Upstream],
) -> None:
    old, new = upstream_factory("old"), upstream_factory("new")
    d = daemon_factory(basic_config(short_dir, old))
    with d.channel() as ch:
        in_flight = ch.unary_unary("/test.Echo/Hold").future(b"old-call", timeout=60)
        eventually(lambda: old.seen)
        write_config(d.config_path, basic_config(short_dir, new))
        d.signal(signal.SIGHUP)
        d.wait_log('"reloaded"')
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
        assert [s.method for s in new.seen] == ["Unary"]
        old.release.set()  # the call begun before the reload ends after it, on the old target
        assert in_flight.result(timeout=10) == b"old-call"
    assert d.process.poll() is None


def test_sighup_with_invalid_config_keeps_running_config(
    daemon: Daemon, upstream: Upstream
) -> None:
    daemon.config_path.write_text("listeners: []\ntargets: {up: {kind: nope}}\n")
    daemon.signal(signal.SIGHUP)
    refused = [orjson.loads(ln) for ln in daemon.wait_log("reload refused")]
    assert len(refused) == 1
    assert refused[0]["severity_text"] == "ERROR"
    assert "targets.up.kind" in refused[0]["body"]
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

    def next(self, prefix: str) -> str:
        """The next message starting with `prefix`, skipping others (at most 10 s apart)."""
        while True:
            message = self.sock.recv(4096).decode()
            if message.startswith(prefix):
                return message


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
    assert notify.next("READY=1") == "READY=1"
    d.signal(signal.SIGHUP)
    assert notify.next("RELOADING=1").startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert notify.next("READY=1") == "READY=1"
    d.signal(signal.SIGTERM)
    assert notify.next("STOPPING=1") == "STOPPING=1"
    assert d.wait() == 0


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "400000"}
    assert Notifier(env).watchdog_interval == 0.2
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 0.2
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/run/systemd/notify"}).watchdog_interval is None


def test_sd_notify_watchdog_keeps_pinging_while_the_daemon_runs(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
    notify: NotifySocket,
) -> None:
    d = daemon_factory(basic_config(short_dir, upstream),
                       env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"})
    for _ in range(5):
        assert notify.next("WATCHDOG=1") == "WATCHDOG=1"
    with d.channel() as ch:  # and the daemon serves meanwhile
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
    assert notify.next("WATCHDOG=1") == "WATCHDOG=1"


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
    daemon.wait_log("reload refused")
    assert "s3cret-value" not in daemon.log_path.read_text()
    with daemon.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"still", timeout=5) == b"still"
    assert daemon.process.poll() is None
