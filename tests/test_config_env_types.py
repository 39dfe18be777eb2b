"""`${VAR}` for number, boolean, duration and size keys: read as the key's type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import HttpTarget, KafkaTarget
from sidecar.config_loader import load_config, parse_config
from sidecar.errors import ConfigError


def base_config(**top: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "listeners": [{"name": "app", "socket": "/run/sidecar/app.sock", "default_target": "up"}],
        "targets": {"up": {"kind": "grpc", "address": "up:50051"}},
    }
    raw.update(top)
    return raw


def problems_of(raw: Any, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env)
    return list(info.value.problems)


def test_an_integer_key_takes_a_variable() -> None:
    config = parse_config(base_config(defaults={"limits": {"max_in_flight": "${N}"}}),
                          env={"N": "7"})
    assert config.defaults.limits.max_in_flight == 7
    assert config.targets["up"].limits.max_in_flight == 7  # inherited as any default is


def test_a_duration_key_takes_a_variable() -> None:
    config = parse_config(base_config(defaults={"timeout": "${T}"}), env={"T": "250ms"})
    assert config.defaults.timeout == pytest.approx(0.25)


def test_a_boolean_key_takes_a_variable() -> None:
    raw = base_config(log={"access": "${ACCESS}"})
    raw["targets"]["up"]["required"] = "${REQUIRED}"
    config = parse_config(raw, env={"ACCESS": "false", "REQUIRED": "true"})
    assert config.log.access is False
    assert config.targets["up"].required is True


def test_a_size_key_takes_a_variable() -> None:
    raw = base_config()
    raw["targets"]["web"] = {"kind": "http", "base_url": "http://web", "max_body": "${BODY}"}
    web = parse_config(raw, env={"BODY": "2MiB"}).targets["web"]
    assert isinstance(web, HttpTarget) and web.max_body == 2 * 1024 * 1024


def test_a_number_key_takes_a_variable_and_its_default_form() -> None:
    raw = base_config(telemetry={"tracing": {"sample_ratio": "${RATIO:-0.25}"}})
    assert parse_config(raw, env={}).telemetry.tracing.sample_ratio == 0.25


def test_an_unquoted_variable_in_a_yaml_file_is_read_as_the_keys_type(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "listeners: [{name: app, socket: /run/sidecar/app.sock}]\n"
        "defaults:\n  limits:\n    max_in_flight: ${N}\n  retry:\n    attempts: \"${A}\"\n")
    config = load_config(str(path), env={"N": "12", "A": "2"})
    assert config.defaults.limits.max_in_flight == 12
    assert config.defaults.retry.attempts == 2


@pytest.mark.parametrize(
    ("path", "raw", "expected"),
    [
        ("defaults.limits.max_in_flight",
         base_config(defaults={"limits": {"max_in_flight": "${N}"}}), "a whole number"),
        ("defaults.timeout", base_config(defaults={"timeout": "${N}"}), "a duration"),
        ("log.access", base_config(log={"access": "${N}"}), "true or false"),
        ("defaults.limits.max_message",
         base_config(defaults={"limits": {"max_message": "${N}"}}), "a size"),
        ("telemetry.tracing.sample_ratio",
         base_config(telemetry={"tracing": {"sample_ratio": "${N}"}}), "a number"),
    ],
)
def test_a_bad_value_names_the_key_path_and_the_variable_but_not_the_value(
    path: str, raw: dict[str, Any], expected: str
) -> None:
    problems = problems_of(raw, env={"N": "seven-ish"})
    (line,) = [p for p in problems if p.startswith(f"{path}: ")]
    assert expected in line and "${N}" in line, line
    assert "seven-ish" not in line


def test_a_typed_value_that_breaks_a_bound_names_the_key_path() -> None:
    problems = problems_of(base_config(defaults={"limits": {"max_in_flight": "${N}"}}),
                           env={"N": "0"})
    assert problems == ["defaults.limits.max_in_flight: must be >= 1"]


def test_a_literal_quoted_number_is_still_refused() -> None:
    problems = problems_of(base_config(defaults={"limits": {"max_in_flight": "7"}}), env={})
    assert problems == ["defaults.limits.max_in_flight: must be a whole number, got '7'"]


def test_values_read_as_numbers_or_durations_are_not_kept_as_secrets() -> None:
    raw = base_config(defaults={"limits": {"max_in_flight": "${N}"}, "timeout": "${T}"})
    raw["targets"]["events"] = {"kind": "kafka", "bootstrap_servers": ["${BROKER}"],
                                "producer": {"config": {"sasl.password": "${PASS}"}}}
    config = parse_config(raw, env={"N": "7", "T": "250ms", "BROKER": "k.private:9092",
                                    "PASS": "hunter22"})
    events = config.targets["events"]
    assert isinstance(events, KafkaTarget)
    assert config.secrets == {"k.private:9092", "hunter22"}


def test_a_value_used_both_as_text_and_as_a_number_stays_a_secret() -> None:
    raw = base_config(defaults={"limits": {"max_in_flight": "${N}"}})
    raw["targets"]["web"] = {"kind": "http", "base_url": "http://web",
                             "headers": {"X-Shard": "${N}"}}
    assert parse_config(raw, env={"N": "4242"}).secrets == {"4242"}


def test_a_retry_on_item_takes_a_variable_as_an_http_status_or_a_code_name() -> None:
    config = parse_config(base_config(defaults={"retry": {"on": ["${STATUS}", "${CODE}"]}}),
                          env={"STATUS": "503", "CODE": "UNAVAILABLE"})
    assert config.defaults.retry.on == (503, "UNAVAILABLE")
    problems = problems_of(base_config(defaults={"retry": {"on": ["${STATUS}"]}}),
                           env={"STATUS": "404"})
    assert problems == ["defaults.retry.on[0]: must be a gRPC status code name or an HTTP "
                        "5xx status"]
