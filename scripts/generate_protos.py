"""Generate the public `sidecar.v1` package from protos/ (run after editing a .proto).

Usage: python scripts/generate_protos.py [OUT_DIR]
Writes sidecar/v1/: the protobuf and gRPC modules, a .pyi stub for type checkers,
and a copy of the .proto itself, so the wheel ships the source its code came from.
The import path is the proto package, so the generated modules import each other
unchanged. A test regenerates into a temporary folder and compares, so the
committed files cannot fall behind the proto.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PROTO = "sidecar/v1/sidecar.proto"
PACKAGE_DIR = ROOT / "sidecar" / "v1"
GENERATED = ("sidecar_pb2.py", "sidecar_pb2.pyi", "sidecar_pb2_grpc.py")
# Copied verbatim beside the generated modules: what `protoc -I <site-packages>` finds.
COPIED = ("sidecar.proto",)


def generate(out_dir: Path) -> None:
    """Write the generated modules for PROTO, and the proto itself, into out_dir."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(PROTOS / PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {PROTO}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(Path(tmp) / "sidecar" / "v1" / name, out_dir / name)
    for name in COPIED:
        shutil.copyfile(PROTOS / "sidecar" / "v1" / name, out_dir / name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR)
