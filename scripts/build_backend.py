"""The package's build backend: setuptools, with the per-call path compiled by mypyc in
wheels (setup.py lists the modules).

- `pip install .`, `pip wheel .` and the container image get the compiled wheel; mypy
  (which ships mypyc) is added to the isolated build environment only then.
- `pip install -e .` stays pure Python, so a developer's edits take effect at once.
- SIDECAR_COMPILE=0 builds a pure-Python wheel; so does a machine without a C compiler
  or the Python headers, saying so on stderr. The package works the same either way:
  `sidecar status` and the daemon's start line say which one runs (`build`).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (hooks used as they are)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

MYPYC = "mypy==2.4.1"  # the version the sources were compiled and tested with


def _compiling() -> bool:
    if os.environ.get("SIDECAR_COMPILE", "1") == "0":
        return False
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which(compiler.split()[0]) is None or not headers.exists():
        print("sidecar: no C compiler or Python headers here: building the pure-Python "
              "wheel (slower per call; SIDECAR_COMPILE=0 says so quietly)", file=sys.stderr)
        return False
    return True


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    extra = [MYPYC] if _compiling() else []
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *extra]


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    os.environ["_SIDECAR_MYPYC"] = "1" if _compiling() else "0"
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
