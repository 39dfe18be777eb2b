"""`sidecar check-config`: exit status and one stderr line per problem, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

VALID: dict[str, Any] = {
    "listeners": [{"name": "app", "socket": "/run/sidecar/app.sock", "default_target": "up"}],
    "targets": {"up": {"kind": "grpc", "address": "up:50051"}},
}


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SIDECAR_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", *args],
        cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60,
        check=False,
    )


def write(path: Path, config: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_valid_config_exits_zero(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.yaml", VALID)
    result = check_config("--config", path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "ok" in result.stdout


def test_config_with_three_problems_exits_one_with_one_line_each(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "listeners": [{"name": "app", "socket": "relative.sock", "default_target": "up"}],
        "targets": {
            "up": {"kind": "grpc", "address": "up:50051"},
            "billing": {"kind": "http", "base_url": "http://billing:8080",
                        "pool": {"max_connections": 0}},
        },
        "log": {"level": "verbose"},
    }
    result = check_config("--config", write(tmp_path / "bad.yaml", config))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert sorted(line.partition(": ")[0] for line in lines) == [
        "listeners[0].socket",
        "log.level",
        "targets.billing.pool.max_connections",
    ]
    assert "targets.billing.pool.max_connections: must be >= 1" in lines
    assert result.stdout == ""


def test_sidecar_config_env_var_is_used_without_config_option(tmp_path: Path) -> None:
    good = write(tmp_path / "ok.yaml", VALID)
    result = check_config(env={"SIDECAR_CONFIG": good})
    assert result.returncode == 0, result.stderr
    assert good in result.stdout

    bad = write(tmp_path / "bad.yaml", {"listeners": []})
    result = check_config(env={"SIDECAR_CONFIG": bad})
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["listeners: at least one listener is required"]


def test_config_option_beats_sidecar_config_env_var(tmp_path: Path) -> None:
    good = write(tmp_path / "ok.yaml", VALID)
    bad = write(tmp_path / "bad.yaml", {"listeners": []})
    result = check_config("--config", good, env={"SIDECAR_CONFIG": bad})
    assert result.returncode == 0, result.stderr


def test_missing_config_file_exits_one_naming_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    result = check_config("--config", path)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{path}: ")


def test_check_config_reports_producer_settings_librdkafka_refuses(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "listeners: [{name: app, socket: /tmp/x.sock}]\n"
        "targets:\n"
        "  events:\n"
        "    kind: kafka\n"
        "    bootstrap_servers: ['127.0.0.1:9']\n"
        "    producer: {config: {no.such.setting: hunter2}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("targets.events.producer: ")
    assert "no.such.setting" in lines[0] and "hunter2" not in lines[0]
