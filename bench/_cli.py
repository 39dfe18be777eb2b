"""Command-line options the side-by-side benchmarks share."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _procs import BenchError


def int_list(text: str) -> tuple[int, ...]:
    """`1,32` -> (1, 32): positive integers only."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected a comma list of positive integers")
    return values


def add_window_options(p: argparse.ArgumentParser) -> None:
    """--concurrency, --seconds, --rounds, --warmup and --json, with the shared defaults."""
    p.add_argument("--concurrency", type=int_list, default=(1, 32), help="default: 1,32")
    p.add_argument("--seconds", type=float, default=5.0, help="measured window per sample")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    p.add_argument("--json", type=Path, dest="json_path", help="also write results here")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # unwinds, so the children are stopped and the temp dir removed


def run_bench(prefix: str, json_path: Path | None,
              body: Callable[[Path], dict[str, object]]) -> int:
    """Run `body(work_dir)` in a fresh short temp dir (sun_path is 108 bytes), removed
    afterwards even on SIGTERM; write its results as JSON if asked. The exit code."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        results = body(work)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0
