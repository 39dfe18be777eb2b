"""The committed generated code matches protos/: regenerate and compare."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import ROOT


def test_generated_code_is_current(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "generate_protos.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    for name in gen.GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / "sidecar" / "_generated" / name).read_text()
        assert fresh == committed, f"{name} is stale: run python scripts/generate_protos.py"
