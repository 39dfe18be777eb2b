"""`sidecar config-schema` and config/sidecar.schema.json keep in step with the loader.

- The committed schema is what the command prints.
- Every config in config/ and every whole config shown in README.md and docs/*.md
  validates against it.
- The schema and the loader agree on every section, key and value. The cases are
  generated from the schema itself, walked over the complete example of
  docs/configuration.md (which uses every key): for each section, the loader's
  list of known keys (its "unknown key" message) is the schema's; for each key,
  values of the wrong type, out of bounds or out of the enum are refused by both,
  at that key's path; values of the key's type, and `${VAR}`s giving them, are
  accepted by both; a required key is required by both. So a key added to the
  loader and not to the schema, or the other way round, fails here.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from sidecar.config_loader import _Yaml12Loader, parse_config
from sidecar.config_schema import config_schema
from sidecar.errors import ConfigError
from tests.conftest import ROOT
from tests.test_docs import EXAMPLE_ENV, _write_example, example_yaml

SCHEMA_FILE = ROOT / "config" / "sidecar.schema.json"
SCHEMA = config_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
UNKNOWN = "zz_unknown"
Path_ = tuple[str | int, ...]


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # as the daemon reads its file


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# ---- the committed file and the configs of the repository --------------------------------


def test_committed_schema_is_what_config_schema_prints() -> None:
    result = subprocess.run([sys.executable, "-m", "sidecar", "config-schema"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == SCHEMA
    assert SCHEMA_FILE.read_text() == result.stdout, (
        "regenerate: python -m sidecar config-schema > config/sidecar.schema.json")


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def repository_configs() -> Iterator[tuple[str, Any]]:
    for path in [ROOT / "config" / "sidecar.yaml",
                 *sorted((ROOT / "config" / "examples").glob("*.yaml"))]:
        yield str(path.relative_to(ROOT)), read_yaml(path.read_text())
    configmap = ROOT / "config" / "kubernetes" / "configmap.yaml"
    yield "config/kubernetes/configmap.yaml", read_yaml(
        yaml.safe_load(configmap.read_text())["data"]["sidecar.yaml"])


def doc_configs() -> Iterator[tuple[str, Any]]:
    """The yaml blocks of README.md and docs/*.md that are a whole config (with listeners)."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for match in re.finditer(r"^```ya?ml\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
            try:
                raw = read_yaml(match.group(1))
            except yaml.YAMLError:
                continue  # a Kubernetes manifest or a fragment with `...`
            if isinstance(raw, dict) and "listeners" in raw:
                line = text[:match.start()].count("\n") + 1
                yield f"{doc.relative_to(ROOT)}:{line}", raw


CONFIGS = [*repository_configs(), *doc_configs()]


def test_the_configs_include_the_repository_and_docs_examples() -> None:
    names = [name for name, _ in CONFIGS]
    assert "config/kubernetes/configmap.yaml" in names
    assert any(name.startswith("docs/configuration.md:") for name in names)
    assert any(name.startswith("README.md:") for name in names)


@pytest.mark.parametrize(("name", "raw"), CONFIGS, ids=[name for name, _ in CONFIGS])
def test_every_example_config_validates(name: str, raw: Any) -> None:
    problems = [f"{dotted(tuple(e.absolute_path))}: {e.message}"
                for e in VALIDATOR.iter_errors(raw)]
    assert not problems, problems


# ---- walking the schema over the complete example ----------------------------------------


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def branches(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The schemas a value may match, `${VAR}` and null left out."""
    node = resolve(node)
    if ("anyOf" in node or "oneOf" in node) and "type" not in node:
        out = [b for sub in node.get("anyOf", node.get("oneOf")) for b in branches(sub)]
        return [b for b in out if b is not SCHEMA["$defs"]["env"] and b != {"type": "null"}]
    return [node]


def object_schema(node: dict[str, Any], value: Any) -> dict[str, Any] | None:
    """The object schema a mapping value is checked with (a target's by its kind)."""
    for b in branches(node):
        kind = b.get("properties", {}).get("kind", {}).get("const")
        if ("properties" in b or "additionalProperties" in b) and (
                kind is None or kind == value.get("kind")):
            return b
    return None


def sections(value: Any, node: dict[str, Any], path: Path_ = ()
             ) -> Iterator[tuple[Path_, dict[str, Any]]]:
    """Every mapping of `value` that the schema describes key by key, with its schema."""
    if isinstance(value, list):
        items = next(b["items"] for b in branches(node) if "items" in b)
        for i, item in enumerate(value):
            yield from sections(item, items, (*path, i))
        return
    if not isinstance(value, dict):
        return
    obj = object_schema(node, value)
    assert obj is not None, dotted(path)
    if "properties" in obj:
        yield path, obj
    for key, sub in value.items():
        prop = obj.get("properties", {}).get(key) or obj.get("additionalProperties")
        if isinstance(prop, dict):
            yield from sections(sub, prop, (*path, key))


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The complete example with real TLS files and a spool folder this test may write."""
    folder = tmp_path_factory.mktemp("schema")
    text = _write_example(folder, example_yaml()).read_text()
    raw = read_yaml(text.replace("/var/lib/sidecar/spool/", f"{folder}/spool/"))
    parse_config(copy.deepcopy(raw), env=EXAMPLE_ENV)
    assert not list(VALIDATOR.iter_errors(raw))
    return raw  # type: ignore[no-any-return]


def at(raw: dict[str, Any], path: Path_) -> Any:
    node: Any = raw
    for part in path:
        node = node[part]
    return node


def with_value(raw: dict[str, Any], path: Path_, key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    at(out, path)[key] = value
    return out


def loader_problems(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    try:
        parse_config(copy.deepcopy(raw), env={**EXAMPLE_ENV, **(env or {})})
    except ConfigError as e:
        return list(e.problems)
    return []


def schema_paths(raw: dict[str, Any]) -> set[str]:
    """The paths of the schema's errors, and of the errors inside anyOf and oneOf."""
    out: set[str] = set()

    def walk(errors: Any) -> None:
        for e in errors:
            out.add(dotted(tuple(e.absolute_path)))
            walk(e.context or ())

    walk(VALIDATOR.iter_errors(raw))
    return out


def names(key_path: str, lines: list[str]) -> bool:
    """Whether a loader problem is about `key_path` (or inside it), not an unknown key."""
    return any(re.match(re.escape(key_path) + r"[:.\[]", line) and "unknown key" not in line
               for line in lines)


def test_the_walk_reaches_every_section_of_the_schema(example: dict[str, Any]) -> None:
    reached = {id(obj) for _, obj in sections(example, SCHEMA)}
    objects = [d for name, d in SCHEMA["$defs"].items() if "properties" in d] + [SCHEMA]
    missing = [d.get("title", "") or next(iter(d["properties"])) for d in objects
               if id(d) not in reached]
    assert not missing, f"the complete example has no section with these keys: {missing}"


def test_every_section_knows_the_keys_the_loader_knows(example: dict[str, Any]) -> None:
    checked = 0
    for path, obj in sections(example, SCHEMA):
        raw = with_value(example, path, UNKNOWN, 1)
        prefix = dotted((*path, UNKNOWN))
        line = next((p for p in loader_problems(raw) if p.startswith(f"{prefix}: unknown key")),
                    None)
        assert line is not None, f"the loader took {prefix}"
        known = set(line.split("(known: ", 1)[1].rstrip(")").split(", "))
        assert set(obj["properties"]) == known, dotted(path) or "top level"
        assert dotted(path) in schema_paths(raw), f"the schema took {prefix}"
        checked += 1
    assert checked > 30


# ---- values of each key --------------------------------------------------------------------


def _bounds(b: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    low, high = b["minimum"], b.get("maximum")
    valid = [low, low + 1] if high is None else [low, high]
    wrong = [low - 1, "zz", True] + ([high + 1] if high is not None else [])
    if b["type"] == "integer":
        wrong.append(low + 0.5)
    return valid, wrong


def cases(prop: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Values of a key's type, and values the key must refuse, from its schema."""
    node = resolve(prop)
    refs = {b.get("$ref") for b in node.get("anyOf", ())}
    if "#/$defs/duration" in refs:
        # Within every backoff's base and max of the example, so `max >= base` holds.
        return ["1s", "100ms", "0.1s"], ["0s", "0.0ms", "5", 5, "5 s", "zz", True]
    if "#/$defs/duration_or_zero" in refs:
        return ["0s", "1s", "100ms"], ["5", 5, "zz", True, "-1s"]
    if "#/$defs/size" in refs:
        return [1, "1KiB", "2MiB"], [0, "0KiB", "zz", "1 parsec", True, 1.5]
    found = branches(prop)
    if any("properties" in b or "const" in b for b in found):
        return [], ["zz", [1]]
    b = found[0]
    types = b.get("type")
    if isinstance(types, list):  # null is tried apart, by whether the key is required
        types = [t for t in types if t != "null"]
        types = types[0] if len(types) == 1 else types
    if "enum" in b:
        return list(b["enum"]), ["zz", True, [1]]
    if types == "boolean":
        return [True, False], ["zz", 1, "yes"]
    if types in ("integer", "number"):
        return _bounds(b)
    if types == "array":
        return [], ["zz", {"a": 1}, [True]]
    if types == "object" or "additionalProperties" in b:
        return [], ["zz", [1], {"a": True}]
    if "pattern" in b:
        return [], ["zz", True, [1]]
    assert types == ["string", "number"], prop
    return ["text", 7], [True, [1], {"a": 1}]


def keys(example: dict[str, Any]) -> Iterator[tuple[Path_, str, dict[str, Any], bool | None]]:
    """Each key with its schema, and whether null is wrong (required), right or neither
    (one of two keys, or two together: null leaves one out)."""
    for path, obj in sections(example, SCHEMA):
        for key, prop in obj["properties"].items():
            paired = any(key in rule.get("required", ()) for rule in obj.get("oneOf", ())) \
                or key in obj.get("dependentRequired", {})
            yield path, key, prop, None if paired else key in obj.get("required", ())


def test_both_refuse_a_wrong_value_of_every_key_at_its_path(example: dict[str, Any]) -> None:
    checked = 0
    for path, key, prop, required in keys(example):
        key_path = dotted((*path, key))
        for value in cases(prop)[1] + ([None] if required else []):
            raw = with_value(example, path, key, value)
            assert names(key_path, loader_problems(raw)), (
                f"the loader took {key_path}: {value!r}")
            assert any(p == key_path or p.startswith((key_path + ".", key_path + "["))
                       for p in schema_paths(raw)), f"the schema took {key_path}: {value!r}"
            checked += 1
    assert checked > 300


# Text keys the loader checks against other parts of the config or the file system.
REFERENCES = {"default_target", "target", "ca_file", "cert_file", "key_file"}
# Keys the rest of the example refers to: null (no targets) is valid, but not there.
REFERRED = {"targets"}


def test_both_take_every_value_of_each_keys_type(example: dict[str, Any]) -> None:
    checked = 0
    for path, key, prop, required in keys(example):
        if key not in at(example, path) or key in REFERENCES:
            continue  # tried where the example gives the key, so other keys stay valid
        null = [None] if required is False and dotted((*path, key)) not in REFERRED else []
        for value in cases(prop)[0] + null:
            raw = with_value(example, path, key, value)
            key_path = dotted((*path, key))
            assert not loader_problems(raw), (key_path, value, loader_problems(raw))
            assert not schema_paths(raw), (key_path, value, schema_paths(raw))
            checked += 1
    assert checked > 150


def test_a_var_is_taken_for_every_typed_key(example: dict[str, Any]) -> None:
    """`${VAR}` for a number, boolean, duration, size or choice: the loader reads the
    variable as the key's type, and the schema takes the reference."""
    kinds: set[str] = set()
    for path, key, prop, _ in keys(example):
        node = resolve(prop)
        if {"$ref": "#/$defs/env"} not in node.get("anyOf", ()) or key not in at(example, path):
            continue
        value = at(example, path)[key]
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        raw = with_value(example, path, key, "${SCHEMA_TEST_VALUE}")
        key_path = dotted((*path, key))
        assert not loader_problems(raw, {"SCHEMA_TEST_VALUE": text}), key_path
        assert not schema_paths(raw), key_path
        kinds.add(type(value).__name__ if not isinstance(value, str) else
                  "duration" if re.fullmatch(r"[\d.]+(us|ms|s|m|h)", value) else
                  "size" if re.fullmatch(r"\d+[KMG]i?B", value) else "text")
    assert {"int", "float", "bool", "duration", "size"} <= kinds, kinds


@pytest.mark.parametrize(("key", "value"), [
    ("defaults.limits.max_in_flight", "7"), ("defaults.retry.budget.ratio", "0.5"),
    ("log.access", "false"), ("defaults.timeout", "250ms"),
    ("defaults.limits.max_message", "2MiB"),
])
def test_a_var_validates_for_a_number_boolean_duration_and_size(key: str, value: str) -> None:
    *parents, leaf = key.split(".")
    raw: dict[str, Any] = {"listeners": [{"name": "app", "socket": "/tmp/s.sock"}]}
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = "${N}"
    assert not list(VALIDATOR.iter_errors(raw))
    assert not loader_problems(raw, {"N": value})
    node[leaf] = "N"  # not a reference: neither takes it
    assert list(VALIDATOR.iter_errors(raw))
    assert names(key, loader_problems(raw))


def test_both_require_the_required_keys(example: dict[str, Any]) -> None:
    checked = 0
    for path, obj in sections(example, SCHEMA):
        node = at(example, path)
        for key in obj["properties"]:
            if key not in node:
                continue
            raw = copy.deepcopy(example)
            del at(raw, path)[key]
            key_path = dotted((*path, key))
            if any(key in rule.get("required", ()) for rule in obj.get("oneOf", ())) or \
                    key in obj.get("dependentRequired", {}):
                continue  # one of two, or two together: the test below
            required = key in obj.get("required", ())
            assert names(key_path, loader_problems(raw)) == required, key_path
            assert (dotted(path) in schema_paths(raw)) == required, key_path
            checked += required
    assert checked >= 8


def test_a_peer_rule_takes_one_of_uid_and_gid_and_tls_both_cert_and_key() -> None:
    base: dict[str, Any] = {"listeners": [{"name": "app", "socket": "/tmp/s.sock"}]}
    both = copy.deepcopy(base)
    both["listeners"][0]["identity"] = {"peers": [{"uid": 1, "gid": 2, "user_id": "u"}]}
    assert loader_problems(both) and list(VALIDATOR.iter_errors(both))
    cert_only = {**base, "targets": {"t": {"kind": "http", "base_url": "http://h",
                                           "tls": {"cert_file": os.devnull}}}}
    assert names("targets.t.tls.key_file", loader_problems(cert_only))
    assert list(VALIDATOR.iter_errors(cert_only))


def test_schema_file_is_where_the_docs_say() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert "config/sidecar.schema.json" in doc
    assert Path(SCHEMA_FILE).is_file()


def test_a_draft_7_validator_checks_the_same(example: dict[str, Any]) -> None:
    """yaml-language-server (VS Code's YAML extension) implements draft 7: read as draft 7,
    the schema takes the same configs and refuses the same wrong values."""
    draft7 = jsonschema.Draft7Validator(SCHEMA)
    for name, raw in [*CONFIGS, ("the complete example", example)]:
        assert not list(draft7.iter_errors(raw)), name
    for path, key, prop, _ in keys(example):
        for value in cases(prop)[1]:
            raw = with_value(example, path, key, value)
            assert list(draft7.iter_errors(raw)), (dotted((*path, key)), value)


def test_every_key_has_a_description_and_every_section_refuses_unknown_keys() -> None:
    objects = [SCHEMA, *SCHEMA["$defs"].values(), SCHEMA["properties"]["admin"]]
    for obj in (o for o in objects if "properties" in o):
        assert obj["additionalProperties"] is False, list(obj["properties"])
        for key, prop in obj["properties"].items():
            assert prop.get("description"), key
