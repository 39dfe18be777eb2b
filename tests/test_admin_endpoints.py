"""Admin endpoints for operators: /config (redacted), POST /log_level, POST /drain, and the
/ready, /live aliases; over real sockets against the daemon as a process."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from sidecar.config_loader import parse_config
from sidecar.telemetry.redaction import REDACTED, redacted_config
from tests.conftest import Daemon, Upstream, basic_config, eventually, free_port

TOKEN = "tok-4f9a2c71e0"
KAFKA_PASSWORD = "kafka-pw-83d1b6"
LITERAL_KEY = "literal-key-5521"


def _request(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _with_admin(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    port = free_port()
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    return config, f"http://127.0.0.1:{port}"


def _secret_config(short_dir: Path, upstream: Upstream) -> dict[str, Any]:
    config = basic_config(short_dir, upstream)
    config["defaults"] = {"limits": {"max_in_flight": "${N}"}}
    config["targets"]["billing"] = {
        "kind": "http", "base_url": "http://billing.invalid:8080",
        "headers": {"Authorization": "Bearer ${TOKEN}", "X-Api-Key": LITERAL_KEY,
                    "X-Tenant": "orders"},
    }
    config["targets"]["events"] = {
        "kind": "kafka", "bootstrap_servers": ["127.0.0.1:1"],
        "producer": {"config": {
            "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": "orders", "sasl.password": "${KAFKA_PASSWORD}"}},
    }
    return config


def test_config_shows_the_running_config_with_every_secret_redacted(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config, base = _with_admin(_secret_config(short_dir, upstream))
    daemon_factory(config, env={"TOKEN": TOKEN, "KAFKA_PASSWORD": KAFKA_PASSWORD, "N": "7"})
    status, body = _request(f"{base}/config")
    assert status == 200
    for secret in (TOKEN, KAFKA_PASSWORD, LITERAL_KEY):
        assert secret.encode() not in body
    shown = orjson.loads(body)
    billing, events = shown["targets"]["billing"], shown["targets"]["events"]
    assert billing["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED,
                                  "X-Tenant": "orders"}
    assert events["producer"]["config"]["sasl.password"] == REDACTED
    assert events["producer"]["config"]["security.protocol"] == "SASL_PLAINTEXT"
    # What is not secret is shown as the daemon runs it, typed `${VAR}`s included.
    assert shown["defaults"]["limits"]["max_in_flight"] == 7
    assert shown["targets"]["up"]["address"] == upstream.address
    assert shown["listeners"][0]["socket"] == str(short_dir / "app.sock")
    assert shown["admin"]["port"] == int(base.rsplit(":", 1)[1])


def test_log_level_changes_the_running_daemons_level_and_back(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config, base = _with_admin(basic_config(short_dir, upstream))
    d = daemon_factory(config)

    def admin_debug_lines() -> int:
        return sum('"admin request"' in line for line in d.log_lines())

    assert _request(f"{base}/status")[0] == 200
    assert admin_debug_lines() == 0  # info: no debug lines
    status, body = _request(f"{base}/log_level?level=DEBUG", "POST")
    assert status == 200 and orjson.loads(body) == {"level": "debug", "previous": "info"}
    d.wait_log('"log level changed"')
    _request(f"{base}/status")
    eventually(lambda: admin_debug_lines() >= 2)  # the POST itself, then the GET
    status, body = _request(f"{base}/log_level?level=info", "POST")
    assert status == 200 and orjson.loads(body) == {"level": "info", "previous": "debug"}
    seen = admin_debug_lines()
    _request(f"{base}/status")
    _request(f"{base}/healthz")
    assert admin_debug_lines() == seen


def test_the_access_log_follows_a_level_set_through_the_admin_endpoint(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config, base = _with_admin(basic_config(short_dir, upstream))
    config["log"] = {"level": "warning"}  # started off: the access log must turn itself on
    d = daemon_factory(config)

    def logged(correlation_id: str) -> bool:
        return any('"body":"call"' in line
                   and f'"sidecar.correlation_id":"{correlation_id}"' in line
                   for line in d.log_lines())

    with d.channel() as ch:
        def call(correlation_id: str) -> None:
            ch.unary_unary("/test.Echo/Unary")(
                b"x", timeout=5, metadata=[("x-correlation-id", correlation_id)])

        call("at-warning")
        assert _request(f"{base}/log_level?level=info", "POST")[0] == 200
        call("at-info")
        eventually(lambda: logged("at-info"))
        assert _request(f"{base}/log_level?level=error", "POST")[0] == 200
        call("at-error")
        assert _request(f"{base}/log_level?level=info", "POST")[0] == 200
        call("at-info-again")
        eventually(lambda: logged("at-info-again"))
        # Written before the next call's line, if at all.
        assert not logged("at-warning") and not logged("at-error")
    assert upstream.calls("Unary") == 4


def test_log_level_refuses_an_unknown_level_naming_the_valid_ones_and_a_get(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config, base = _with_admin(basic_config(short_dir, upstream))
    daemon_factory(config)
    status, body = _request(f"{base}/log_level?level=verbose", "POST")
    assert status == 400
    assert "debug, info, warning, error" in orjson.loads(body)["error"]
    assert _request(f"{base}/log_level", "POST")[0] == 400
    assert _request(f"{base}/log_level?level=debug")[0] == 405
    assert _request(f"{base}/drain")[0] == 405


def test_ready_and_live_answer_as_readyz_and_healthz(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config, base = _with_admin(basic_config(short_dir, upstream))
    config["targets"]["down"] = {"kind": "grpc", "address": f"unix://{short_dir}/nobody.sock",
                                 "required": True}
    daemon_factory(config)
    eventually(lambda: _request(f"{base}/readyz")[0] == 503)
    assert _request(f"{base}/ready") == _request(f"{base}/readyz")
    assert _request(f"{base}/live") == _request(f"{base}/healthz") == (200, b"ok\n")


def test_drain_fails_readiness_at_once_then_drains_and_exits_0(
    daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream
) -> None:
    config, base = _with_admin(basic_config(short_dir, upstream))
    config["drain_timeout"] = "60s"
    d = daemon_factory(config)
    assert _request(f"{base}/ready")[0] == 200
    with d.channel() as ch:
        held = ch.unary_unary("/test.Echo/Hold").future(b"held", timeout=60)
        eventually(lambda: upstream.seen)
        status, body = _request(f"{base}/drain", "POST")
        assert status == 202 and orjson.loads(body) == {"draining": True}
        # Not ready from the answer on, with the reason; the process still lives.
        for path in ("/readyz", "/ready"):
            status, body = _request(f"{base}{path}")
            assert status == 503
            assert orjson.loads(body) == {"ready": False, "reasons": ["draining (POST /drain)"]}
        assert _request(f"{base}/live")[0] == 200
        d.wait_log('"stopping"')
        # A repeated drain is not a second stop signal: the held call still may finish.
        assert _request(f"{base}/drain", "POST")[0] == 202
        assert d.process.poll() is None and not held.done()
        upstream.release.set()
        assert held.result(timeout=10) == b"held"
    assert d.wait(15) == 0
    assert not any("second stop signal" in line for line in d.log_lines())


# ---- redacted_config, no daemon ----------------------------------------------


def _parsed(targets: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    return redacted_config(parse_config(
        {"listeners": [{"name": "app", "socket": "/run/sidecar/app.sock"}], "targets": targets},
        env=env))


def test_a_text_holding_a_substituted_value_is_redacted_whole() -> None:
    shown = _parsed({"events": {"kind": "kafka", "bootstrap_servers": ["${BROKER}:9092"]}},
                    env={"BROKER": "broker-7.private"})
    assert shown["targets"]["events"]["bootstrap_servers"] == [REDACTED]


def test_a_password_in_a_url_is_redacted_and_the_rest_kept() -> None:
    shown = _parsed({"web": {"kind": "http", "base_url": "http://svc:hunter2@web:8080"}}, env={})
    assert shown["targets"]["web"]["base_url"] == f"http://svc:{REDACTED}@web:8080"


def test_secret_like_header_and_producer_names_are_redacted_whatever_their_value() -> None:
    shown = _parsed({
        "web": {"kind": "http", "base_url": "http://web",
                "headers": {"authorization": "Basic abc", "X-Auth-Token": "t",
                            "Cookie": "c=1", "Accept": "application/json"}},
        "events": {"kind": "kafka", "bootstrap_servers": ["k:9092"],
                   "producer": {"config": {"ssl.key.password": "p", "sasl.oauthbearer.config":
                                           "x", "client.id": "orders"}}},
    }, env={})
    assert shown["targets"]["web"]["headers"] == {
        "authorization": REDACTED, "X-Auth-Token": REDACTED, "Cookie": REDACTED,
        "Accept": "application/json"}
    assert shown["targets"]["events"]["producer"]["config"] == {
        "ssl.key.password": REDACTED, "sasl.oauthbearer.config": REDACTED,
        "client.id": "orders"}


def test_the_dump_never_carries_the_secret_set_or_compiled_patterns() -> None:
    shown = _parsed({"events": {"kind": "kafka", "bootstrap_servers": ["k:9092"],
                                "topics": ["orders.*"]}}, env={})
    events = shown["targets"]["events"]
    assert "secrets" not in shown and "topic_patterns" not in events
    assert events["kind"] == "kafka" and events["topics"] == ["orders.*"]
    orjson.dumps(shown)  # JSON all through
