"""Generate sidecar/_generated/ from protos/ (run after editing a .proto).

Usage: python scripts/generate_protos.py [OUT_DIR]
A test regenerates into a temporary folder and compares, so the committed code
cannot fall behind the proto.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PROTO = "sidecar/v1/sidecar.proto"
PACKAGE_DIR = ROOT / "sidecar" / "_generated"
# Generated modules import each other by proto path; ours live in one package.
_IMPORT_FROM = "from sidecar.v1 import sidecar_pb2"
_IMPORT_TO = "from sidecar._generated import sidecar_pb2"
GENERATED = ("sidecar_pb2.py", "sidecar_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Write the generated modules for PROTO into out_dir."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTOS / PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (Path(tmp) / "sidecar" / "v1" / name).read_text()
            (out_dir / name).write_text(text.replace(_IMPORT_FROM, _IMPORT_TO))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR)
