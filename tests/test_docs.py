"""docs/configuration.md cannot drift from the config model.

Every key of the model (dataclasses in sidecar/config.py) has a row in the
reference; every row is a key of the model; each default in a row parses to the
model's default; the complete example uses exactly the documented keys and passes
`sidecar check-config`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
import yaml

from sidecar import config as model
from sidecar import config_loader as loader
from sidecar.config_loader import parse_config
from sidecar.errors import ConfigError
from tests.conftest import ROOT

DOC = ROOT / "docs" / "configuration.md"
TARGET_KINDS = (model.GrpcTarget, model.HttpTarget, model.KafkaTarget)
# Model fields that are not keys of the file: derived by the loader, or the
# target's name (its key in `targets`), or where the config came from.
DERIVED = {
    (model.Config, "source"), (model.Target, "name"), (model.Route, "pattern"),
    (model.KafkaTarget, "topic_patterns"),
}
# The one key the loader splits into several model fields.
RENAMED = {
    (model.Admin, "host"): "address", (model.Admin, "port"): "address",
    (model.Admin, "unix_path"): "address",
}
POLICY_FIELDS = ("timeout", "retry", "breaker", "limits")
# Keys the model keeps outside its dataclass fields: a target's kind is its class.
EXTRA_KEYS = {"targets.<name>.kind"}
# Where each reference section's keys can be tried out: a target of this kind.
SECTION_KIND = {"kind: http": "http", "kind: kafka": "kafka", "TLS": "http"}
REQUIRED_TARGET_KEYS: dict[str, dict[str, Any]] = {
    "grpc": {"address": "127.0.0.1:1"},
    "http": {"base_url": "http://127.0.0.1:1"},
    "kafka": {"bootstrap_servers": ["127.0.0.1:1"]},
}
EXAMPLE_ENV = {"BILLING_API_KEY": "k", "KAFKA_PASSWORD": "p"}


@dataclass(frozen=True)
class Row:
    section: str
    key: str
    default: str


def reference_rows() -> list[Row]:
    """The key tables of the `## Reference` section, with their `###` section."""
    text = DOC.read_text()
    reference = text.split("\n## Reference\n", 1)[1].split("\n## ", 1)[0]
    rows, section = [], ""
    for line in reference.splitlines():
        if line.startswith("### "):
            section = line[4:].strip()
        match = re.match(r"^\| `([^`]+)` \| (.*?) \| .* \|$", line)
        if match:
            rows.append(Row(section, match.group(1), match.group(2).strip()))
    return rows


def documented_keys() -> set[str]:
    return {row.key for row in reference_rows()}


def example_yaml() -> str:
    text = DOC.read_text().split("<!-- complete-example -->", 1)[1]
    return text.split("```yaml\n", 1)[1].split("```", 1)[0]


# ---- the model's keys ---------------------------------------------------------


def _declared(cls: type, name: str, table: set[tuple[type, str]] | dict[tuple[type, str], str]
              ) -> tuple[type, str] | None:
    return next(((base, name) for base in cls.__mro__ if (base, name) in table), None)


def _unwrap_optional(hint: Any) -> Any:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def model_keys(cls: type = model.Config, prefix: str = "") -> Iterator[str]:
    """Dotted key paths of the file, walked from the model's dataclass fields."""
    hints = get_type_hints(cls, vars(model))
    for f in dataclasses.fields(cls):
        if _declared(cls, f.name, DERIVED):
            continue
        if issubclass(cls, model.Target) and f.name in POLICY_FIELDS:
            continue  # documented once, as defaults.<key>; targets may override
        renamed = _declared(cls, f.name, RENAMED)
        if renamed:
            yield prefix + RENAMED[renamed]
            continue
        hint = _unwrap_optional(hints[f.name])
        args = get_args(hint)
        if dataclasses.is_dataclass(hint):
            yield from model_keys(hint, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
            yield from model_keys(args[0], f"{prefix}{f.name}[].")
        elif cls is model.Config and f.name == "targets":
            for kind in TARGET_KINDS:
                yield from model_keys(kind, "targets.<name>.")
        else:
            yield prefix + f.name


def test_every_key_of_the_config_model_is_documented() -> None:
    missing = set(model_keys()) | EXTRA_KEYS
    missing -= documented_keys()
    assert not missing, f"add these keys to {DOC.name}: {sorted(missing)}"


def test_every_documented_key_is_a_key_of_the_config_model() -> None:
    unknown = documented_keys() - set(model_keys()) - EXTRA_KEYS
    assert not unknown, f"{DOC.name} documents keys the model lacks: {sorted(unknown)}"


def test_target_policy_fields_are_the_defaults_fields() -> None:
    """What lets the reference document the policy once, under `defaults`."""
    assert tuple(f.name for f in dataclasses.fields(model.Defaults)) == POLICY_FIELDS
    assert loader.POLICY_KEYS == POLICY_FIELDS
    target_fields = {f.name for f in dataclasses.fields(model.Target)}
    assert set(POLICY_FIELDS) <= target_fields


def test_the_loaders_key_lists_are_documented() -> None:
    keys = documented_keys()

    def has(prefix: str) -> bool:
        return any(k == prefix or k.startswith((prefix + ".", prefix + "[")) for k in keys)

    for key in loader.TOP_KEYS:
        assert has(key), key
    for key in loader.RETRY_KEYS:
        assert has(f"defaults.retry.{key}"), key
    for key in loader.COMMON_TARGET_KEYS:
        assert has(f"defaults.{key}" if key in POLICY_FIELDS else f"targets.<name>.{key}"), key
    for kind, kind_keys in loader.KIND_KEYS.items():
        for key in kind_keys:
            assert has(f"targets.<name>.{key}"), (kind, key)


# ---- defaults in the tables are the model's defaults ---------------------------


def _base_config(kind: str) -> dict[str, Any]:
    return {
        "listeners": [{"name": "app", "socket": "/tmp/sidecar-docs-test.sock"}],
        "admin": {"address": "127.0.0.1:9901"},
        "targets": {"t": {"kind": kind, **REQUIRED_TARGET_KEYS[kind]}},
    }


def _parent(config: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    """The mapping that holds `key` in `config`, created empty where missing."""
    *parents, leaf = key.split(".")
    node: Any = config
    for part in parents:
        if part.endswith("[]"):
            node = node[part[:-2]][0]
        elif part == "<name>":
            node = node["t"]
        else:
            node = node.setdefault(part, {})
    return node, leaf


def test_documented_defaults_are_the_models_defaults() -> None:
    checked = []
    for row in reference_rows():
        literal = re.fullmatch(r"`([^`]*)`", row.default)
        if literal is None or "[]." in row.key:  # `required`, per-kind defaults, ...
            continue
        kind = SECTION_KIND.get(row.section, "grpc")
        base = _base_config(kind)
        _parent(base, row.key)  # the section exists in both, so only the key differs
        explicit = copy.deepcopy(base)
        node, leaf = _parent(explicit, row.key)
        node[leaf] = yaml.safe_load(literal.group(1))
        try:
            assert parse_config(explicit) == parse_config(base), (
                f"{row.key}: the documented default {row.default} is not the model's default")
        except ConfigError as e:
            pytest.fail(f"{row.key}: documented default {row.default} refused: {e.problems}")
        checked.append(row.key)
    assert len(checked) > 40, checked


# ---- the complete example ------------------------------------------------------


def example_keys(node: Any, documented: set[str], prefix: str = "") -> Iterator[str]:
    """Key paths of the example, target names as <name>, stopping at documented keys."""
    for key, value in node.items():
        if prefix == "targets.":
            yield from example_keys(value, documented, "targets.<name>.")
            continue
        path = f"{prefix}{key}"
        records = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        if path in documented or not (isinstance(value, dict) or records):
            yield path
        elif isinstance(value, list):
            for item in value:
                yield from example_keys(item, documented, f"{path}[].")
        else:
            yield from example_keys(value, documented, f"{path}.")


def _as_documented(path: str) -> str:
    """A target's policy override is documented as the defaults key."""
    prefix = "targets.<name>."
    if path.startswith(prefix) and path[len(prefix):].split(".")[0] in POLICY_FIELDS:
        return "defaults." + path[len(prefix):]
    return path


def test_complete_example_uses_every_documented_key_and_no_other() -> None:
    documented = documented_keys()
    raw = yaml.safe_load(example_yaml())
    overridable = {"targets.<name>." + k.removeprefix("defaults.")
                   for k in documented if k.startswith("defaults.")}
    used = set(example_keys(raw, documented | overridable))
    assert {_as_documented(p) for p in used} == documented
    overrides = {_as_documented(p) for p in used if p.startswith("targets.<name>.")}
    not_overridden = {k for k in documented if k.startswith("defaults.")} - overrides
    assert not not_overridden, f"no target in the example overrides {sorted(not_overridden)}"


def _write_example(folder: Path, text: str) -> Path:
    tls = folder / "tls"
    tls.mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (tls / name).write_text("")  # check-config checks the files exist
    path = folder / "example.yaml"
    path.write_text(text.replace("/etc/sidecar/tls/", f"{tls}/"))
    return path


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, **EXAMPLE_ENV},
    )


def test_complete_example_passes_check_config(tmp_path: Path) -> None:
    result = _check_config(_write_example(tmp_path, example_yaml()))
    assert result.returncode == 0, result.stderr
    assert "ok (2 listeners, 5 targets)" in result.stdout


def test_check_config_would_refuse_an_undocumented_key(tmp_path: Path) -> None:
    """So the example passing means every key in it is accepted, not ignored."""
    text = example_yaml().replace("drain_timeout: 10s", "drain_timeout: 10s\ndrain_timout: 10s")
    result = _check_config(_write_example(tmp_path, text))
    assert result.returncode == 1
    assert "drain_timout: unknown key" in result.stderr


def test_example_configs_in_the_repository_pass_check_config(tmp_path: Path) -> None:
    env = {**os.environ, **EXAMPLE_ENV, "SIDECAR_INSTANCE": "orders"}
    configs = [ROOT / "config" / "sidecar.yaml", *sorted((ROOT / "config" / "examples").glob(
        "*.yaml"))]
    for path in configs:
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "check-config", "--config", str(path)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
        )
        assert result.returncode == 0, (path, result.stderr)


def test_operator_docs_link_to_files_that_exist() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
