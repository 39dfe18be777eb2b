"""docs/security.md: its worked example is a valid config, and says what the code does."""

from __future__ import annotations

import re

import yaml

from sidecar.config_loader import parse_config
from sidecar.resilience.rate_limit import pushback_ms
from tests.conftest import ROOT

DOC = ROOT / "docs" / "security.md"


def _example() -> str:
    text = DOC.read_text().split("## A worked example", 1)[1]
    return text.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_worked_example_passes_the_config_loader() -> None:
    config = parse_config(yaml.safe_load(_example()))
    orders, batch = config.listeners
    assert orders.identity.unknown_peer == batch.identity.unknown_peer == "reject"
    assert orders.targets == ("orders", "billing")
    assert orders.rate_limit is not None and orders.rate_limit.per == "caller"
    assert config.targets["billing"].metadata.caller_uid == "X-Sidecar-Caller-Uid"


def test_the_examples_pushback_figure_is_one_token_of_its_rate() -> None:
    rate = yaml.safe_load(_example())["listeners"][0]["rate_limit"]["rate"]
    per_second = float(rate.removesuffix("/s"))
    quoted = re.search(r"`grpc-retry-pushback-ms: (\d+)`", DOC.read_text())
    assert quoted is not None
    assert int(quoted.group(1)) == pushback_ms(1 / per_second)


def test_the_docs_index_links_the_security_model() -> None:
    assert "(security.md)" in (ROOT / "docs" / "README.md").read_text()
