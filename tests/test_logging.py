"""Logs: JSON lines, levels from config, and never a secret."""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from sidecar.telemetry.logging import _timestamp
from tests.conftest import Daemon, Upstream, basic_config, write_config

SECRET = "tok-9f8e7d6c5b4a"


def test_secrets_never_reach_the_log(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["log"] = {"level": "debug"}
    config["targets"]["billing"] = {"kind": "http", "base_url": "http://127.0.0.1:9",
                                    "headers": {"X-Api-Key": "${BILLING_KEY}"}}
    d = daemon_factory(config, env={"BILLING_KEY": SECRET})
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(
            b"x", metadata=[("authorization", f"Bearer {SECRET}"), ("x-api-key", SECRET)])
    bad = dict(config, drain_timeout="${BILLING_KEY}")  # invalid, and the value is a secret
    write_config(d.config_path, bad)
    d.signal(signal.SIGHUP)
    d.wait_log("reload refused")
    d.stop()
    text = d.log_path.read_text()
    assert "drain_timeout" in text
    assert SECRET not in text


def test_every_line_is_json_with_level_and_message(daemon: Daemon) -> None:
    with daemon.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    daemon.stop()
    entries = [orjson.loads(line) for line in daemon.log_lines()]
    assert {"started", "call", "stopping", "stopped"} <= {e["body"] for e in entries}
    assert all({"timestamp", "severity_text", "severity_number", "body", "scope"} <= e.keys()
               for e in entries)


def test_warning_level_silences_access_lines(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config = basic_config(short_dir, upstream)
    config["log"] = {"level": "warning"}
    d = daemon_factory(config)
    with d.channel() as ch:
        ch.unary_unary("/test.Echo/Unary")(b"x", timeout=5)
    d.stop()
    assert not any('"call"' in ln for ln in d.log_lines())


def test_timestamps_are_rfc3339_utc_within_a_second_and_across_seconds() -> None:
    """The second's text is formatted once and reused: every instant still reads right."""
    for created in (1796241143.0, 1796241143.25, 1796241143.999999, 1796241144.000001,
                    1796241143.5, 1796241143.9999999, 86399.75, 86400.0):
        expected = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert _timestamp(created) == expected, created
