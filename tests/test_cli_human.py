"""The client commands for a person at a shell: defaults from the environment, `-h`,
one-line errors naming what was tried, and `sidecar health` exiting as grpc_health_probe does.

Every exit code is checked against a real daemon process or a real socket file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.cli import main
from tests.conftest import ROOT, Daemon, Upstream, basic_config, free_port
from tests.http_upstream import HttpUpstream
from tests.waiting import eventually

_OURS = ("SIDECAR_SOCKET", "SIDECAR_ADDRESS", "SIDECAR_ADMIN", "SIDECAR_CONFIG")


def sidecar(*args: str, env: dict[str, str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`sidecar ARGS` as a process, with none of our variables unless `env` sets them."""
    clean = {k: v for k, v in os.environ.items() if k not in _OURS}
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**clean, **(env or {})})


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a user mistake prints; fails on a traceback or a second line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# ---- sidecar health: grpc_health_probe's exit codes --------------------------------------


def test_health_exits_0_and_prints_serving_for_a_serving_daemon(daemon: Daemon) -> None:
    result = sidecar("health", "--socket", daemon.socket)
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING")


def test_health_exits_2_naming_the_socket_when_no_daemon_is_there(short_dir: Path) -> None:
    missing = short_dir / "app.sock"
    result = sidecar("health", "--socket", str(missing))
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith(f"error: cannot reach the daemon at unix:{missing}: ")
    assert "no such file" in line


def test_health_exits_2_for_a_socket_file_no_daemon_listens_on(short_dir: Path) -> None:
    stale = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: what a crashed daemon leaves
    result = sidecar("health", "--socket", str(stale))
    assert result.returncode == 2
    assert "connection refused" in one_error_line(result)


def test_health_exits_3_and_says_the_service_is_unknown(daemon: Daemon) -> None:
    result = sidecar("health", "--socket", daemon.socket, "--service", "nope")
    assert result.returncode == 3
    line = one_error_line(result)
    assert line.startswith("error: NOT_FOUND: unknown service 'nope'")
    assert f"unix:{daemon.socket}" in line


def test_health_exits_4_while_a_target_is_not_serving(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["targets"]["down"] = {"kind": "grpc", "address": f"unix://{short_dir}/nobody.sock"}
    d = daemon_factory(config)
    assert sidecar("health", "--socket", d.socket, "--service", "up").returncode == 0

    def not_serving() -> subprocess.CompletedProcess[str]:
        result = sidecar("health", "--socket", d.socket, "--service", "down")
        assert result.returncode == 4, (result.returncode, result.stdout, result.stderr)
        return result

    assert eventually(not_serving, timeout=30).stdout.strip() == "NOT_SERVING"


def test_health_exits_1_for_invalid_arguments_as_grpc_health_probe_does() -> None:
    result = sidecar("health", "--timeout", "soon")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "'soon'" in result.stderr


# ---- where the commands look for the daemon ---------------------------------------------


def test_socket_defaults_to_sidecar_socket(daemon: Daemon) -> None:
    result = sidecar("health", env={"SIDECAR_SOCKET": daemon.socket})
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING")


def test_socket_falls_back_to_the_kubernetes_sidecar_address_uri(daemon: Daemon) -> None:
    result = sidecar("health", env={"SIDECAR_ADDRESS": f"unix://{daemon.socket}"})
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING")


def test_sidecar_socket_wins_over_sidecar_address(daemon: Daemon, short_dir: Path) -> None:
    elsewhere = short_dir / "elsewhere.sock"
    result = sidecar("health", env={"SIDECAR_SOCKET": str(elsewhere),
                                    "SIDECAR_ADDRESS": f"unix://{daemon.socket}"})
    assert result.returncode == 2
    assert f"unix:{elsewhere}:" in one_error_line(result)


def test_socket_option_wins_over_the_environment(daemon: Daemon, short_dir: Path) -> None:
    result = sidecar("health", "--socket", daemon.socket,
                     env={"SIDECAR_SOCKET": str(short_dir / "elsewhere.sock")})
    assert result.returncode == 0


@pytest.mark.parametrize("form", ["unix:{}", "unix://{}", "{}"])
def test_socket_takes_a_path_or_a_unix_uri(daemon: Daemon, form: str) -> None:
    result = sidecar("health", "--socket", form.format(daemon.socket))
    assert result.returncode == 0, result.stderr


def test_socket_without_any_setting_is_the_packaged_path() -> None:
    if os.path.exists("/run/sidecar/app.sock"):
        pytest.skip("a daemon may be serving /run/sidecar/app.sock on this machine")
    result = sidecar("health")
    assert result.returncode == 2
    assert one_error_line(result).startswith(
        "error: cannot reach the daemon at unix:/run/sidecar/app.sock: ")


def test_admin_defaults_to_sidecar_admin(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    port = free_port()
    config = basic_config(short_dir, upstream)
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    daemon_factory(config)
    result = sidecar("status", env={"SIDECAR_ADMIN": f"127.0.0.1:{port}"})
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("up ") for line in result.stdout.splitlines())


def test_admin_without_any_setting_is_the_packaged_address() -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9901)) == 0:
            pytest.skip("something listens on 127.0.0.1:9901 on this machine")
    result = sidecar("status")
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("error: cannot reach admin endpoint at 127.0.0.1:9901: ")
    assert "connection refused" in line


# ---- one line naming what was tried -----------------------------------------------------


def test_status_with_an_address_that_is_no_address_says_so() -> None:
    result = sidecar("status", "--admin", "nonsense")
    assert result.returncode == 1
    assert one_error_line(result) == (
        "error: cannot reach admin endpoint at nonsense: not host:port or unix:/path")


def test_status_against_a_closed_port_names_the_endpoint() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = sidecar("status", "--admin", address)
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith(f"error: cannot reach admin endpoint at {address}: connection refused")


def test_status_against_an_http_server_that_is_not_a_sidecar(
    http_upstream: HttpUpstream
) -> None:
    address = http_upstream.url.removeprefix("http://")
    result = sidecar("status", "--admin", address)
    assert result.returncode == 1
    assert one_error_line(result).startswith(
        f"error: cannot read /status from admin endpoint at {address}: HTTP 404")


@pytest.mark.parametrize("command", [
    ("http", "web", "GET", "/"),
    ("publish", "events", "topic", "--value", "v"),
])
def test_calls_name_the_socket_they_could_not_reach(short_dir: Path,
                                                    command: tuple[str, ...]) -> None:
    missing = short_dir / "app.sock"
    result = sidecar(command[0], "--socket", str(missing), *command[1:])
    assert result.returncode == 1
    assert one_error_line(result).startswith(f"error: cannot reach the daemon at unix:{missing}: ")


def test_an_rpc_error_prints_its_code_and_the_daemons_message(daemon: Daemon) -> None:
    result = sidecar("http", "--socket", daemon.socket, "nope", "GET", "/")
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("error: NOT_FOUND: ") and "nope" in line


# ---- -h ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(main.commands))])
def test_h_is_help_on_the_group_and_every_command(command: list[str]) -> None:
    short = CliRunner().invoke(main, [*command, "-h"])
    long = CliRunner().invoke(main, [*command, "--help"])
    assert short.exit_code == 0, short.output
    assert short.output == long.output and short.output.startswith("Usage: ")


def test_h_works_from_the_installed_command() -> None:
    result = sidecar("health", "-h")
    assert result.returncode == 0
    assert "SIDECAR_SOCKET" in result.stdout and "/run/sidecar/app.sock" in result.stdout
