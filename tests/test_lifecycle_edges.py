"""The edges of the lifecycle, over real processes: failures at start and reload never
escape, a second stop signal ends the drain, replaced runtimes still flush, config file
watching (with a ConfigMap-style symlink swap), socket modes and socket errors."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from tests.conftest import ROOT, Daemon, Upstream, basic_config, free_port, write_config
from tests.kafka_broker import Broker, broker
from tests.waiting import eventually

__all__ = ["broker"]  # the fixture, imported for pytest


def _entries(d: Daemon) -> list[dict[str, Any]]:
    """Every stderr line as JSON: a line that is not (a traceback, a library's own
    text) fails the test here."""
    records = [orjson.loads(line) for line in d.log_lines()]
    return [{**r.pop("attributes", {}), **r} for r in records]


def _logged(d: Daemon, msg: str) -> list[dict[str, Any]]:
    return [e for e in _entries(d) if msg in e["body"]]


def _health(socket_path: str, service: str = "") -> int:
    with grpc.insecure_channel(f"unix:{socket_path}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


def _pem_pair(folder: Path) -> tuple[Path, Path]:
    import trustme

    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    bad = folder / "bad.pem"
    bad.write_text("this is not PEM\n")
    return ca_file, bad


# ---- 1. start and reload never escape ---------------------------------------------


def test_check_config_reports_a_ca_file_that_is_not_pem_by_key_path(short_dir: Path) -> None:
    _, bad = _pem_pair(short_dir)
    config = basic_config(short_dir, None)
    config["targets"] = {"billing": {"kind": "http", "base_url": "https://billing",
                                     "tls": {"ca_file": str(bad)}}}
    path = short_dir / "c.yaml"
    write_config(path, config)
    done = subprocess.run([sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("targets.billing.tls.ca_file: not a usable PEM CA bundle")
    assert "Traceback" not in done.stderr


def test_sighup_with_a_ca_file_that_is_not_pem_is_refused_and_the_old_config_serves(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    ca_file, bad = _pem_pair(short_dir)
    config = basic_config(short_dir, upstream)
    config["targets"]["billing"] = {"kind": "http", "base_url": "https://billing",
                                    "tls": {"ca_file": str(ca_file)}}
    d = daemon_factory(config)
    config["targets"]["billing"]["tls"]["ca_file"] = str(bad)
    write_config(d.config_path, config)
    d.signal(signal.SIGHUP)
    refused = eventually(lambda: _logged(d, "reload refused"))
    assert "targets.billing.tls.ca_file" in refused[0]["body"]
    assert d.process.poll() is None
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
    assert d.stop() == 0
    _entries(d)  # every line JSON: no traceback


def test_busy_admin_port_at_start_is_one_line_and_exit_1_leaving_no_socket(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    port = free_port()
    first = basic_config(short_dir, upstream)
    first["admin"] = {"address": f"127.0.0.1:{port}"}
    daemon_factory(first)
    second = basic_config(short_dir, upstream, socket=str(short_dir / "b.sock"))
    second["admin"] = {"address": f"127.0.0.1:{port}"}
    d = daemon_factory(second, wait=False)
    assert d.wait(30) == 1
    errors = [e for e in _entries(d) if e["severity_text"] == "ERROR"]
    assert len(errors) == 1
    assert "admin.address" in errors[0]["body"] and f"127.0.0.1:{port}" in errors[0]["body"]
    assert not os.path.exists(short_dir / "b.sock")


def test_failure_after_listeners_started_at_start_removes_their_sockets(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    not_a_socket = short_dir / "file"
    not_a_socket.write_text("x")
    config = basic_config(short_dir, upstream)
    config["listeners"].append({"name": "b", "socket": str(not_a_socket)})
    d = daemon_factory(config, wait=False)
    assert d.wait(30) == 1
    (error,) = [e for e in _entries(d) if e["severity_text"] == "ERROR"]
    assert "listeners[1].socket" in error["body"] and "not a socket" in error["body"]
    assert not os.path.exists(short_dir / "app.sock")  # the first listener's, cleaned up
    assert not_a_socket.read_text() == "x"


# ---- 2. signals ---------------------------------------------------------------


def test_second_sigterm_ends_the_drain_at_once(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["drain_timeout"] = "10m"
    d = daemon_factory(config)
    with d.channel() as ch:
        held = ch.unary_unary("/test.Echo/Hold").future(b"x", timeout=600)
        eventually(lambda: upstream.calls("Hold") == 1)
        d.signal(signal.SIGTERM)
        eventually(lambda: _logged(d, "stopping"))
        assert d.process.poll() is None  # draining: the held call keeps it alive
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
        with pytest.raises(grpc.RpcError):
            held.result(timeout=30)
    assert _logged(d, "stopped")[0]["forced"] is True
    assert not os.path.exists(d.socket)


def test_sigterm_while_a_replaced_runtime_flushes_still_delivers_its_messages(
    daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker
) -> None:
    topic = broker.create_topic(partitions=1)
    config = basic_config(short_dir, None)
    config["drain_timeout"] = "60s"
    # A long linger keeps the message in the producer well past the caller's deadline.
    config["targets"] = {"events": {"kind": "kafka", "bootstrap_servers": [broker.bootstrap],
                                    "topics": ["*"], "producer": {"linger": "4s"}}}
    d = daemon_factory(config)
    with d.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            sidecar_pb2_grpc.PublisherStub(ch).Publish(
                sidecar_pb2.PublishRequest(target="events", topic=topic, value=b"kept"),
                timeout=0.5)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE  # not yet acknowledged
    d.signal(signal.SIGHUP)  # the old runtime, with the message, starts flushing
    eventually(lambda: _logged(d, "reloaded"))
    d.signal(signal.SIGTERM)
    assert d.wait(60) == 0
    assert [m.value() for m in broker.read_all(topic)] == [b"kept"]


# ---- 3. config file watching ----------------------------------------------------


def _configmap(folder: Path, name: str, config: dict[str, Any]) -> None:
    """Lay out or update `folder` as the kubelet does a ConfigMap volume: the data in a
    timestamped folder, `..data` a symlink to it swapped by rename, the file a symlink
    through `..data`."""
    version = folder / f"..{name}"
    version.mkdir()
    write_config(version / "sidecar.yaml", config)
    previous = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    os.symlink(version.name, folder / "..data_tmp")
    os.rename(folder / "..data_tmp", folder / "..data")
    if not (folder / "sidecar.yaml").is_symlink():
        os.symlink("..data/sidecar.yaml", folder / "sidecar.yaml")
    if previous is not None:
        shutil.rmtree(folder / previous)


def _start_on(config_path: Path, log_path: Path, socket_path: str) -> Daemon:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(config_path)],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    return Daemon(process, config_path, log_path, socket_path, None)


def test_configmap_symlink_swap_reloads_and_an_invalid_swap_is_refused(
    short_dir: Path, upstream_factory: Callable[[str], Upstream]
) -> None:
    first, second = upstream_factory("one"), upstream_factory("two")
    mount = short_dir / "cm"
    mount.mkdir()
    config = basic_config(short_dir, first)
    config["reload"] = {"watch": True, "debounce": "100ms"}
    _configmap(mount, "2026_12_01_a", config)
    d = _start_on(mount / "sidecar.yaml", short_dir / "d.log", config["listeners"][0]["socket"])
    try:
        eventually(lambda: _health(d.socket) == health_pb2.HealthCheckResponse.SERVING)
        config["targets"]["up"]["address"] = second.address
        _configmap(mount, "2026_12_01_b", config)
        eventually(lambda: len(_logged(d, "reloaded")) == 1)
        with d.channel() as ch:
            assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
        assert (first.calls("Unary"), second.calls("Unary")) == (0, 1)

        config["targets"]["up"]["kind"] = "nonsense"
        _configmap(mount, "2026_12_01_c", config)
        refused = eventually(lambda: _logged(d, "reload refused"))
        assert "targets.up.kind" in refused[0]["body"]
        with d.channel() as ch:
            assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
        assert second.calls("Unary") == 2
        assert len(_logged(d, "reloaded")) == 1
    finally:
        assert d.stop() == 0
    _entries(d)


def test_watch_ignores_a_touch_and_other_files_and_follows_an_editor_rename(
    daemon_factory: Callable[..., Daemon], short_dir: Path,
    upstream_factory: Callable[[str], Upstream],
) -> None:
    first, second = upstream_factory("one"), upstream_factory("two")
    config = basic_config(short_dir, first)
    config["reload"] = {"watch": True, "debounce": "50ms"}
    d = daemon_factory(config)
    os.utime(d.config_path)  # same bytes
    (short_dir / "unrelated.txt").write_text("x")
    config["targets"]["up"]["address"] = second.address
    temp = short_dir / ".sidecar0.yaml.swp"
    write_config(temp, config)
    os.rename(temp, d.config_path)
    eventually(lambda: len(_logged(d, "reloaded")) == 1)
    with d.channel() as ch:
        assert ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5) == b"x"
    assert second.calls("Unary") == 1
    assert len(_logged(d, "reloaded")) == 1  # the touch and the other file did not reload


# ---- 8. sockets -----------------------------------------------------------------


def test_socket_never_exists_wider_than_its_mode_under_a_permissive_umask(
    short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream, mode="0600")
    path = short_dir / "c.yaml"
    write_config(path, config)
    sock = config["listeners"][0]["socket"]
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(stat.S_IMODE(os.lstat(sock).st_mode))

    watcher = threading.Thread(target=watch)
    watcher.start()
    previous = os.umask(0)
    try:
        d = _start_on(path, short_dir / "d.log", sock)
    finally:
        os.umask(previous)
    try:
        eventually(lambda: _health(sock) == health_pb2.HealthCheckResponse.SERVING)
    finally:
        stop.set()
        watcher.join()
        d.stop()
    assert seen == {0o600}


def test_a_socket_folder_that_cannot_be_made_names_the_key_and_what_to_change(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    blocker = short_dir / "run"
    blocker.write_text("a file where a folder should be")
    config = basic_config(short_dir, upstream, socket=str(blocker / "app.sock"))
    d = daemon_factory(config, wait=False)
    assert d.wait(30) == 1
    (error,) = [e for e in _entries(d) if e["severity_text"] == "ERROR"]
    assert error["body"].startswith("startup failed: listeners[0].socket: cannot create folder")
    assert "set it to a path" in error["body"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_socket_folder_this_user_may_not_write_is_named_with_a_hint(
    short_dir: Path, upstream: Upstream
) -> None:
    """Run as `nobody` against a folder only root may write. The interpreter must be
    reachable by that user; where it is not (a Python under /root), the check runs
    in-process against the same code path instead of skipping silently."""
    folder = short_dir / "rootonly"
    folder.mkdir(mode=0o755)
    sock = str(folder / "app.sock")
    nobody = 65534
    probe = subprocess.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}",
                            "--clear-groups", sys.executable, "-c", "pass"],
                           capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        from sidecar.errors import ListenerError
        from sidecar.listeners import prepare_socket_path

        pid = os.fork()
        if pid == 0:  # the child drops to nobody and reports by exit code
            os.setgid(nobody)
            os.setuid(nobody)
            try:
                prepare_socket_path(sock, "listeners[0].socket")
            except ListenerError as e:
                ok = str(e).startswith("listeners[0].socket: cannot create") and \
                    "not writable" in str(e) and "RuntimeDirectory" in str(e)
                os._exit(0 if ok else 3)
            os._exit(4)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return
    os.chmod(short_dir, 0o755)
    config = basic_config(short_dir, upstream, socket=sock)
    path = short_dir / "c.yaml"
    write_config(path, config)
    os.chmod(path, 0o644)
    done = subprocess.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
                           sys.executable, "-m", "sidecar", "run", "--config", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 1
    entries = [orjson.loads(line) for line in done.stderr.splitlines()]
    (error,) = [e for e in entries if e["severity_text"] == "ERROR"]
    assert error["body"].startswith("startup failed: listeners[0].socket: cannot create")
    assert "not writable" in error["body"] and "RuntimeDirectory" in error["body"]


def test_socket_in_use_names_the_key(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(str(short_dir / "app.sock"))
    held.listen()
    try:
        d = daemon_factory(basic_config(short_dir, upstream), wait=False)
        assert d.wait(30) == 1
    finally:
        held.close()
    (error,) = [e for e in _entries(d) if e["severity_text"] == "ERROR"]
    assert "listeners[0].socket" in error["body"] and "in use" in error["body"]
