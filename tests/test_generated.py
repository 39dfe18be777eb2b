"""The public generated package `sidecar.v1`: current with protos/, and shipped.

The committed code matches a fresh regeneration; the old private path
`sidecar._generated` is the same modules; the wheel carries the .proto and the
type stub; the container image copies the protos to a documented place.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

from tests.conftest import ROOT

PROTO = ROOT / "protos" / "sidecar" / "v1" / "sidecar.proto"
IMAGE_PROTOS = "/usr/share/sidecar/protos"


def _generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "generate_protos.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_generated_code_is_current(tmp_path: Path) -> None:
    gen = _generator()
    gen.generate(tmp_path)
    assert gen.PACKAGE_DIR == ROOT / "sidecar" / "v1"
    for name in (*gen.GENERATED, *gen.COPIED):
        fresh = (tmp_path / name).read_text()
        committed = (gen.PACKAGE_DIR / name).read_text()
        assert fresh == committed, f"{name} is stale: run python scripts/generate_protos.py"


def test_public_and_private_import_paths_are_the_same_modules() -> None:
    from sidecar import _generated
    from sidecar.v1 import sidecar_pb2, sidecar_pb2_grpc

    assert _generated.sidecar_pb2 is sidecar_pb2
    assert _generated.sidecar_pb2_grpc is sidecar_pb2_grpc
    assert sidecar_pb2.DESCRIPTOR.package == "sidecar.v1"
    assert sidecar_pb2.DESCRIPTOR.name == "sidecar/v1/sidecar.proto"


def test_proto_names_where_other_languages_put_their_code() -> None:
    from sidecar.v1 import sidecar_pb2

    options = sidecar_pb2.DESCRIPTOR.GetOptions()
    assert options.go_package == "sidecar/v1;sidecarv1"
    assert options.java_package == "sidecar.v1"
    assert options.java_multiple_files
    assert options.java_outer_classname == "SidecarProto"
    assert options.csharp_namespace == "Sidecar.V1"


def test_shipped_proto_is_found_at_its_own_path_under_the_include_root() -> None:
    import sidecar.v1

    assert sidecar.v1.PROTO.read_text() == PROTO.read_text()
    assert (sidecar.v1.PROTO_ROOT / "sidecar" / "v1" / "sidecar.proto").samefile(sidecar.v1.PROTO)


def test_wheel_ships_the_generated_code_its_proto_and_type_stub(tmp_path: Path) -> None:
    # Built from a copy of the sources, so no build/ folder appears in the checkout, and
    # with build isolation, as the image is: a venv's own setuptools may be too old.
    src = tmp_path / "src"
    src.mkdir()
    (src / "scripts").mkdir()
    for name in ("pyproject.toml", "README.md", "setup.py", "scripts/build_backend.py"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "sidecar", src / "sidecar",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    subprocess.run(  # pure Python: what is shipped besides the compiled modules is the same
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "--wheel-dir", str(tmp_path / "wheels"), str(src)],
        check=True, timeout=120, capture_output=True, env={**os.environ, "SIDECAR_COMPILE": "0"},
    )
    [wheel] = (tmp_path / "wheels").glob("sidecar-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert z.read("sidecar/v1/sidecar.proto").decode() == PROTO.read_text()
    assert {"sidecar/v1/__init__.py", "sidecar/v1/sidecar_pb2.py", "sidecar/v1/sidecar_pb2.pyi",
            "sidecar/v1/sidecar_pb2_grpc.py", "sidecar/_generated/__init__.py",
            "sidecar/py.typed"} <= names


def test_image_copies_the_protos_to_usr_share_sidecar() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    runtime = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
    assert f"COPY protos {IMAGE_PROTOS}" in runtime
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!protos/" in ignore, "protos/ must be in the Docker build context"
    assert IMAGE_PROTOS in (ROOT / "docs" / "container.md").read_text()
