"""Command-line options the side-by-side benchmarks share."""

from __future__ import annotations

import argparse
from pathlib import Path


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
