"""The docs cannot drift from the code.

docs/configuration.md and the config model: every key of the model (dataclasses
in sidecar/config.py) has a row in the reference; every row is a key of the model;
each default in a row parses to the model's default; the complete example uses
exactly the documented keys and passes `sidecar check-config`.

What README.md and docs/*.md quote: daemon messages are worded as in the source
and quoted check-config lines are what it prints; every `sidecar` command and flag
shown exists; header names are the ones sent on the wire; the /status fields and
metric names named exist in a running daemon's answers.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import types
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
import trustme
import yaml

from sidecar import config as model
from sidecar import config_loader as loader
from sidecar.config_loader import parse_config
from sidecar.errors import ConfigError
from tests.conftest import ROOT, Daemon, Upstream, basic_config, free_port

DOC = ROOT / "docs" / "configuration.md"
TARGET_KINDS = (model.GrpcTarget, model.HttpTarget, model.KafkaTarget)
# Model fields that are not keys of the file: derived by the loader, or the
# target's name (its key in `targets`), or where the config came from.
DERIVED = {
    (model.Config, "source"), (model.Target, "name"), (model.Route, "pattern"),
    (model.KafkaTarget, "topic_patterns"), (model.Config, "secrets"),
    (model.MetadataNames, "reserved"),
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
    # check-config loads TLS material as a client would: real PEM files.
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    client = ca.issue_cert("client.internal")
    client.cert_chain_pems[0].write_to_path(str(tls / "client.pem"))
    client.private_key_pem.write_to_path(str(tls / "client.key"))
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


# ---- what the docs quote is what the code says ---------------------------------
#
# Messages, commands and flags, header names, /status fields and metric names
# quoted in README.md and docs/*.md, each checked against the code that makes them.

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
# Where operators look up a message they saw: every daemon message quoted here is checked.
MESSAGE_DOCS = [ROOT / "README.md", TROUBLESHOOTING]


def _prose(doc: Path) -> str:
    """A doc outside its fenced blocks, whitespace collapsed (a code span may wrap)."""
    text = re.sub(r"^```.*?^```$", "", doc.read_text(), flags=re.MULTILINE | re.DOTALL)
    return " ".join(text.split())


def code_spans(doc: Path) -> list[str]:
    return re.findall(r"`([^`]+)`", _prose(doc))


def _source_strings() -> list[str]:
    """Every string literal in sidecar/ (not generated code), f-string fields and
    %-format fields as NUL, so a doc's quote can be looked up in them."""
    found = []
    for path in sorted((ROOT / "sidecar").rglob("*.py")):
        if path.parent.name == "v1":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                found.append("".join(v.value if isinstance(v, ast.Constant) else "\0"
                                     for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return [re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfg]", "\0", s) for s in found]


# What a doc writes inside a quoted message for text that varies.
_VARIES = re.compile(r"""
    \.\.\.                                        # left out
  | '[^']*'                                       # a name: 'orders'
  | (?<![\w-])/[\w./-]+                           # a path
  | \b[a-z_]+(?:\[\d+\])?(?:\.[\w<>]+(?:\[\d+\])?)+(?=:|\s|$)   # a key: listeners[0].socket
  | \b(?:N|X|NAME|PATH)\b                         # a placeholder
  | \b\d+(?:\.\d+)*(?::\d+)?\b                    # a number or an address
""", re.VERBOSE)
_STATUS_NAME = re.compile(r"^[A-Z][A-Z_]{3,}:?\s+")  # the gRPC code, not part of the message
# Spans that read like messages but are not the daemon's.
NOT_DAEMON_MESSAGES = {
    "(1 + ratio) x requests": "a formula",
}
# Words in a quoted message that come from the operating system (`strerror`), not from us.
OS_REASONS = {"Permission denied"}
# First words of commands and code that have no flags to give them away.
_NOT_SENTENCES = {"sidecar", "systemctl", "journalctl", "kubectl", "docker", "python", "from"}


def _looks_like_a_message(span: str) -> bool:
    """Words in a sentence, not code, config, a path or a shell command."""
    first = span.split()[0]
    if span in NOT_DAEMON_MESSAGES or "/" in first or re.search(r"[{}=\"@$~|]", span):
        return False
    if re.search(r"(?:^|\s)--?[A-Za-z]", span) or first in _NOT_SENTENCES:
        return False  # a command line with flags, or code
    if re.fullmatch(r"[\w.\[\]<>-]+: \S+", span):
        return False  # one YAML key and its value
    rest = _VARIES.sub("\0", _STATUS_NAME.sub("", span))
    return re.search(r"\b[a-z]{2,} [a-z]{2,}\b", rest) is not None


def quoted_messages() -> list[tuple[str, str]]:
    return [(doc.name, span) for doc in MESSAGE_DOCS for span in code_spans(doc)
            if _looks_like_a_message(span)]


def test_quoted_daemon_messages_are_worded_as_in_the_source() -> None:
    """Each fixed piece of a quoted message (the text between the parts that vary)
    is in some string literal of the daemon, so a reworded message fails here."""
    sources = _source_strings()
    missing = []
    for doc, span in quoted_messages():
        if _is_check_config_quote(span):
            continue  # worded from parts; the next test runs check-config for these
        text = _VARIES.sub("\0", _STATUS_NAME.sub("", span))
        # Messages are joined from parts at ": " and "; " (`KEY: problem; hint`).
        for piece in re.split(r"\0|: |; ", text):
            piece = piece.strip(" :;,.")
            if piece in OS_REASONS or len(re.findall(r"[A-Za-z]{2,}", piece)) < 2:
                continue
            if not any(piece in s for s in sources):
                missing.append(f"{doc}: `{span}` ({piece!r} is in no source string)")
    assert not missing, "\n".join(missing)
    quoted = {span for _, span in quoted_messages()}
    # The check sees the messages operators search for (and so would miss them if it broke).
    assert any("is in use by a running process" in s for s in quoted), quoted
    assert any("circuit open after repeated upstream failures" in s for s in quoted), quoted
    assert any("reload refused" in s for s in quoted), quoted


# Key paths whose `sidecar check-config` line the docs quote, and a config that makes it.
CHECK_CONFIG_CASES = {
    "targets.billing.pool.max_connections":
        {"billing": {"kind": "http", "base_url": "http://billing:8080",
                     "pool": {"max_connections": 0}}},
    "targets.billing.required":
        {"billing": {"kind": "http", "base_url": "http://billing:8080", "required": "yes"}},
    "defaults.retry.attemps": {},  # the typo, in `defaults` below
}


def _is_check_config_quote(span: str) -> bool:
    return any(span.startswith(f"{key}: ") for key in CHECK_CONFIG_CASES)


def test_quoted_check_config_lines_are_what_check_config_prints(tmp_path: Path) -> None:
    """Every quote of these keys' problem lines, in any doc, is the line printed
    (`...` standing for a shortened tail)."""
    printed = {}
    for targets in CHECK_CONFIG_CASES.values():
        config = {"listeners": [{"name": "app", "socket": "/tmp/sidecar-docs-test.sock"}],
                  "defaults": {"retry": {"attemps": 2}}, "targets": targets}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(config))
        result = _check_config(path)
        assert result.returncode == 1
        printed.update(line.split(": ", 1) for line in result.stderr.splitlines())
    for key in CHECK_CONFIG_CASES:
        printed[key] = f"{key}: {printed[key]}"
        quotes = [(doc.name, s) for doc in DOCS for s in code_spans(doc)
                  if s.startswith(f"{key}: ")]
        assert quotes, f"no doc quotes the check-config line for {key}"
        for doc, quote in quotes:
            shape = ".*?".join(map(re.escape, quote.split("..."))) + ("" if "..." in quote
                                                                       else "$")
            assert re.match(shape, printed[key]), (
                f"{doc} quotes `{quote}`; check-config prints `{printed[key]}`")


# ---- commands and flags ----------------------------------------------------------

# A `sidecar` command at the start of a command line (after `VAR=x `, `&& `, `-- `
# of `kubectl exec`, or a venv's bin/).
_COMMAND = re.compile(r"(?:^|&& |-- |/bin/)sidecar ((?:[a-z][\w-]*|--version|-h|--help)(?=\s|$).*)")
_SHELL_BLOCKS = ("sh", "text", "console", "dockerfile", "")


def documented_command_lines() -> Iterator[tuple[str, str]]:
    """(doc, command line) for every `sidecar ...` in code spans and shell blocks."""
    for doc in DOCS:
        text = doc.read_text()
        lines = list(code_spans(doc))
        for lang, block in re.findall(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
            if lang in _SHELL_BLOCKS:
                lines += block.splitlines()
        for line in lines:
            line = re.sub(r"^\s*(?:\w+=\S+\s+)*", "", line)  # VAR=value before the command
            for match in _COMMAND.finditer(line):
                command = re.split(r"\s(?:\||;|&&|#)\s|`", match.group(1))[0]
                yield doc.name, command


def test_documented_sidecar_commands_and_flags_exist() -> None:
    import click

    from sidecar.cli import main

    problems, seen = [], set()
    for doc, line in documented_command_lines():
        words = line.split()
        if words[0] in ("--version", "-h", "--help"):
            continue
        command = main.commands.get(words[0])
        if command is None:
            problems.append(f"{doc}: `sidecar {line}`: no command {words[0]!r}")
            continue
        seen.add(words[0])
        options = {o for p in command.params if isinstance(p, click.Option)
                   for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}
        for flag in re.findall(r"(?<![\w'-])(--?[A-Za-z][\w-]*)", " ".join(words[1:])):
            if flag not in options:
                problems.append(f"{doc}: `sidecar {line}`: {words[0]} has no {flag}")
    assert not problems, "\n".join(problems)
    assert seen == set(main.commands), f"commands no doc shows: {set(main.commands) - seen}"


# ---- header names -----------------------------------------------------------------

# The daemon sends its defaults exactly as METADATA_DEFAULTS spells them.
# getting-started.md also quotes how the demo's aiohttp echo prints two of them.
AIOHTTP_SPELLING = {"X-Request-ID", "X-Correlation-ID"}
STATIC_HEADER_EXAMPLES = {"X-Api-Key"}  # a target's `headers` in the examples


def _sent_names(names: model.MetadataNames) -> tuple[str, ...]:
    """The names a target sends by default (caller_uid is sent only when named)."""
    return (names.user_id, names.correlation_id, names.request_id)


def test_header_names_in_the_docs_are_the_ones_the_code_sends() -> None:
    sent = set(_sent_names(loader.METADATA_DEFAULTS["http"]))
    for doc in DOCS:
        quoted = {s for s in code_spans(doc) if re.fullmatch(r"X-[A-Za-z-]+", s)}
        allowed = sent | STATIC_HEADER_EXAMPLES
        if doc.name == "getting-started.md":
            allowed |= AIOHTTP_SPELLING
        assert quoted <= allowed, f"{doc.name} quotes {sorted(quoted - allowed)}"


def test_documented_metadata_defaults_are_the_loaders() -> None:
    for row in reference_rows():
        if not row.key.startswith("targets.<name>.metadata."):
            continue
        field = row.key.rsplit(".", 1)[1]
        shown = dict((kinds, name) for name, kinds in re.findall(r"`([^`]+)` \(([^)]+)\)",
                                                                 row.default))
        for kinds, name in shown.items():
            for kind in kinds.split(", "):
                assert getattr(loader.METADATA_DEFAULTS[kind], field) == name, (row, kind)


@contextlib.contextmanager
def _raw_http_server() -> Iterator[tuple[int, list[bytes]]]:
    """A bare HTTP/1.1 server (its port, and each request's head byte for byte), so
    header names are seen as sent, not as a server library spells them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    heads: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                        head += chunk
                    heads.append(head)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], heads
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_http_upstream_receives_the_header_names_as_documented(
        daemon_factory: Callable[..., Daemon], short_dir: Path) -> None:
    """On the wire: `X-Correlation-Id`, `X-Request-Id`, `X-User-Id`, as the docs say."""
    from sidecar.v1 import sidecar_pb2, sidecar_pb2_grpc

    with _raw_http_server() as (port, heads):
        config = basic_config(short_dir, None)
        config["targets"] = {"web": {"kind": "http", "base_url": f"http://127.0.0.1:{port}"}}
        daemon = daemon_factory(config)
        with daemon.channel() as channel:
            reply = sidecar_pb2_grpc.HttpProxyStub(channel).Call(
                sidecar_pb2.HttpRequest(target="web", method="GET", path="/docs"), timeout=10,
                metadata=[("x-user-id", "alice"), ("x-correlation-id", "docs-1")])
        assert reply.status == 200
        [head] = [h for h in heads if h.startswith(b"GET /docs ")]
    names = [line.split(b":", 1)[0].decode() for line in head.split(b"\r\n")[1:] if line]
    for name in _sent_names(loader.METADATA_DEFAULTS["http"]):
        assert name in names, (name, names)
    assert "X-Correlation-Id" in names  # the contract's spelling, which the docs quote


# ---- /status fields and metric names ---------------------------------------------

# Spans in troubleshooting.md that name neither a /status field nor a config key.
NOT_FIELDS = {"securityContext.fsGroup": "Kubernetes"}


def _flat_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from _flat_keys(value, f"{prefix}{key}.")


def test_status_fields_and_keys_named_in_troubleshooting_exist(
        daemon_factory: Callable[..., Daemon], upstream: Upstream, short_dir: Path) -> None:
    config = basic_config(short_dir, upstream)
    config["admin"] = {"address": f"127.0.0.1:{free_port()}"}
    daemon = daemon_factory(config)
    with urllib.request.urlopen(f"http://{daemon.admin}/status", timeout=10) as response:
        status = json.loads(response.read())
    fields = {re.sub(r"^targets\.up\.", "targets.NAME.", k) for k in _flat_keys(status)}
    keys = documented_keys()
    unknown = []
    for span in code_spans(TROUBLESHOOTING):
        if span in NOT_FIELDS or not re.fullmatch(r"[a-z_]+(?:\.[A-Za-z_]+)*", span):
            continue
        if "_" not in span and "." not in span:
            continue  # a plain word: `open`, `mode`
        suffix = ("." + span).replace("[]", "")
        if not any(("." + f).endswith(suffix) for f in fields) and not any(
                ("." + k.replace("[]", "")).endswith(suffix) for k in keys):
            unknown.append(span)
    assert not unknown, f"troubleshooting.md names what /status and the config lack: {unknown}"


def test_metric_names_in_the_readme_are_exported(tmp_path: Path) -> None:
    from sidecar.resilience.policy import TargetPolicy
    from sidecar.telemetry.metrics import Metrics

    config = parse_config(_base_config("grpc"))
    metrics = Metrics(lambda: {"t": TargetPolicy(config.targets["t"])}, {"app": 0})
    try:
        for histogram in (metrics.rpc_duration, metrics.http_duration,
                          metrics.messaging_duration):
            histogram.record(0.01, {"sidecar.target": "t"})
        metrics.count_sent("t", "topic", 1, 1)
        text = metrics.render().decode()
    finally:
        metrics.shutdown()
    exported = set(re.findall(r"^([a-z_]+?)(?:_bucket|_count|_sum|_created)?[{ ]", text,
                              re.MULTILINE))
    quoted = [s for s in code_spans(ROOT / "README.md")
              if re.fullmatch(r"(?:\.\.\._)?[a-z][a-z_]*_(?:total|seconds|state|in_flight|calls)",
                              s)]
    assert len(quoted) >= 10, quoted
    missing = [s for s in quoted if s.replace("..._", "sidecar_target_") not in exported]
    assert not missing, f"README quotes metrics /metrics does not have: {missing}"


def test_readme_config_example_passes_check_config(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme.yaml"
    path.write_text(example)
    result = _check_config(path)
    assert result.returncode == 0, result.stderr
