"""The compiled build (setup.py, scripts/build_backend.py): which modules, when it compiles,
and that a daemon says which build it runs. scripts/test_compiled.sh runs this file and the
per-call tests against the compiled wheel with SIDECAR_EXPECT_COMPILED=1."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import tomllib
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import orjson
import pytest

import sidecar
from tests.conftest import ROOT, Daemon, Upstream, basic_config, free_port
from tests.test_admin_endpoints import _request

EXPECTED = "compiled" if os.environ.get("SIDECAR_EXPECT_COMPILED") == "1" else "python"


def compiled_modules() -> list[str]:
    """setup.py's COMPILED, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED":
            paths: list[str] = ast.literal_eval(node.value)
            return paths
    raise AssertionError("setup.py has no COMPILED list")


def backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_backend",
                                                  ROOT / "scripts" / "build_backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_compiles_existing_modules_of_the_package_each_once() -> None:
    paths = compiled_modules()
    assert len(paths) == len(set(paths))
    for path in paths:
        assert (ROOT / path).is_file(), path
        assert path.startswith("sidecar/") and path.endswith(".py")
        assert not path.endswith("__init__.py")  # a package's __init__ stays Python
    # The hot path is in; what runs once at start is not.
    assert {"sidecar/engine/inbound.py", "sidecar/services/native.py",
            "sidecar/upstreams/kafka.py"} <= set(paths)
    assert "sidecar/cli.py" not in paths and "sidecar/config_loader.py" not in paths


def test_the_compiler_is_the_type_checker_the_project_runs() -> None:
    """mypyc compiles what mypy accepts: the build pins the version `dev` checks with."""
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]["dev"]
    assert backend().MYPYC in dev


def test_the_backend_compiles_only_where_it_can(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    module = backend()
    monkeypatch.setenv("SIDECAR_COMPILE", "0")
    assert module._compiling() is False
    assert capsys.readouterr().err == ""  # asked for: no warning
    monkeypatch.delenv("SIDECAR_COMPILE")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert module._compiling() is False
    assert "no C compiler or Python headers here" in capsys.readouterr().err
    monkeypatch.setenv("CC", sys.executable)  # any program that exists
    assert module._compiling() is True


def test_the_package_runs_the_build_it_was_installed_as() -> None:
    """Every listed module is an extension in the compiled build and source otherwise."""
    assert sidecar.build() == EXPECTED
    for path in compiled_modules():
        name = path.removesuffix(".py").replace("/", ".")
        loaded = importlib.import_module(name).__file__ or ""
        assert loaded.endswith(tuple(EXTENSION_SUFFIXES)) == (EXPECTED == "compiled"), loaded


def test_a_daemon_says_which_build_it_runs(daemon_factory: Callable[..., Daemon],
                                           short_dir: Path, upstream: Upstream) -> None:
    config = basic_config(short_dir, upstream)
    port = free_port()
    config["admin"] = {"address": f"127.0.0.1:{port}"}
    d = daemon_factory(config)
    d.wait_log('"started"')  # the socket serves a moment before the line is written
    started = next(r for r in d.records() if r["body"] == "started")
    assert started["build"] == EXPECTED
    status, body = _request(f"http://127.0.0.1:{port}/status")
    assert status == 200 and orjson.loads(body)["build"] == EXPECTED
