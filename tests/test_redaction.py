"""`Redactor`: `${VAR}` values, and their parts, blanked out of library text."""

from __future__ import annotations

from pathlib import Path

from sidecar.config_loader import parse_config
from sidecar.telemetry.redaction import NO_SECRETS, Redactor


def test_a_whole_value_is_blanked_wherever_it_appears() -> None:
    redact = Redactor(["10.1.2.3:9092"])
    assert redact("10.1.2.3:9092/bootstrap: Connect to 10.1.2.3:9092") == (
        "***/bootstrap: Connect to ***")


def test_parts_of_four_characters_or_more_are_blanked_apart() -> None:
    redact = Redactor(["user:hunter22@kafka-7.internal:19092"])
    assert redact("resolved kafka-7.internal to ipv4#10.0.0.7:19092 as user") == (
        "resolved *** to ipv4#10.0.0.7:*** as ***")
    assert redact("password hunter22 refused") == "password *** refused"


def test_an_address_form_is_not_a_secret_part() -> None:
    redact = Redactor(["http://localhost:18080"])
    assert redact("http://localhost:18080") == "***"
    assert redact("other target http://localhost:9000") == "other target http://localhost:9000"


def test_short_parts_stay_but_a_short_whole_value_is_blanked() -> None:
    redact = Redactor(["ab:1"])
    assert redact("ab:1 and ab and 1") == "*** and ab and 1"


def test_without_secrets_text_is_returned_as_is() -> None:
    text = "nothing to hide"
    assert NO_SECRETS(text) is text
    assert not NO_SECRETS and Redactor(["x"])
    assert not Redactor(["", ""])


def test_the_config_keeps_every_value_substituted_from_the_environment(tmp_path: Path) -> None:
    config = parse_config({
        "listeners": [{"name": "app", "socket": str(tmp_path / "app.sock")}],
        "targets": {
            "events": {"kind": "kafka", "bootstrap_servers": ["${BROKER}:9092"]},
            "web": {"kind": "http", "base_url": "http://billing",
                    "headers": {"X-Api-Key": "${KEY:-fallback-key}"}},
        },
    }, env={"BROKER": "broker-3.private"})
    assert config.secrets == {"broker-3.private", "fallback-key"}
    assert "secrets=" not in repr(config)  # the set itself is never shown
