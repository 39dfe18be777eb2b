"""Server streaming (MB/s) and 1000 concurrent streams: direct vs HAProxy vs the daemon.

Two scenarios on the processes of `grpc_unary.py` (same upstream, HAProxy and daemon
configurations), the paths interleaved within every round, medians across rounds:

- `stream`: h2load, one connection, STREAMS streams at a time, each a call of
  `/bench.Echo/Stream` answered with MESSAGES messages of 1 MiB: received MB/s.
- `fanout`: unary 256 B calls, 1000 streams in flight over 10 connections (h2load,
  closed loop): calls/s, p50, errors; before the first window a grpc.aio pass of the
  same shape checks every call's grpc-status (h2load sees only the HTTP status).

Every window also reads the CPU and RSS of the proxy process. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from _cli import add_window_options, run_bench
from _load import (
    METHOD,
    LoadSpec,
    Meter,
    h2load_elapsed,
    h2load_load,
    h2load_run,
)
from _procs import BenchError
from _report import PROXIES, _cell, _table
from grpc_unary import PATHS, start_servers

STREAM_METHOD = "/bench.Echo/Stream"
DEFAULT_PATHS = ("direct", "haproxy", "daemon")
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Options:
    paths: tuple[str, ...]
    scenarios: tuple[str, ...]
    seconds: float
    rounds: int
    warmup: float
    messages: int  # 1 MiB messages per streaming call
    streams: int  # streaming calls in flight at once
    fanout_streams: int
    fanout_connections: int
    json_path: Path | None


@dataclass(frozen=True, slots=True)
class Window:
    """One measured window of one scenario on one path."""

    round: int
    scenario: str
    path: str
    calls: int
    errors: int
    elapsed: float
    mb_per_s: float
    p50_us: float
    proxy_cpu_s: float | None
    proxy_rss_mb: float | None
    upstream_cpu_s: float


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma list of names out of `allowed`."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(p.strip() for p in text.split(",") if p.strip())
        if not names or any(n not in allowed for n in names):
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(allowed)}")
        return names
    return parse


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--paths", type=_names(PATHS), default=DEFAULT_PATHS,
                   help="default: direct,haproxy,daemon")
    p.add_argument("--scenarios", type=_names(("stream", "fanout")),
                   default=("stream", "fanout"))
    add_window_options(p)
    p.add_argument("--messages", type=int, default=64, help="1 MiB messages per stream call")
    p.add_argument("--streams", type=int, default=1, help="stream calls in flight")
    p.add_argument("--fanout-streams", type=int, default=1000)
    p.add_argument("--fanout-connections", type=int, default=10)
    a = p.parse_args(argv)
    if min(a.rounds, a.messages, a.streams, a.fanout_streams, a.fanout_connections) < 1 \
            or a.seconds <= 0 or a.warmup < 0:
        p.error("counts must be >= 1, --seconds > 0, --warmup >= 0")
    return Options(a.paths, a.scenarios, a.seconds, a.rounds, a.warmup, a.messages,
                   a.streams, a.fanout_streams, a.fanout_connections, a.json_path)


Measured = tuple[Window, dict[str, float], dict[str, float]]  # window, CPU s, RSS MB


def _stream_window(opts: Options, socket: str, meter: Meter, work: Path) -> Measured:
    message = work / "stream-request.bin"
    count = str(opts.messages).encode()
    message.write_bytes(b"\x00" + len(count).to_bytes(4, "big") + count)
    spec = LoadSpec(socket, opts.streams, opts.seconds, opts.warmup, 0)
    h2load_run(spec, message, opts.warmup, method=STREAM_METHOD)
    meter.start()
    stdout = h2load_run(spec, message, opts.seconds, method=STREAM_METHOD)
    cpu, _ = meter.stop()
    found = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", stdout)
    received = re.search(r"traffic: [\d.]+\w* \((\d+)\) total", stdout)
    if found is None or received is None:
        raise BenchError(f"cannot read h2load's summary from:\n{stdout}")
    ok, failed, errored, timeout = (int(g) for g in found.groups())
    elapsed = h2load_elapsed(stdout)
    window = Window(0, "stream", "", ok, failed + errored + timeout, elapsed,
                    int(received.group(1)) / MIB / elapsed, math.nan, None, None,
                    cpu["upstream"])
    return window, cpu, meter.rss_mb()


def _fanout_window(opts: Options, socket: str, meter: Meter, work: Path) -> Measured:
    spec = LoadSpec(socket, opts.fanout_streams, opts.seconds, opts.warmup, 256,
                    connections=opts.fanout_connections)
    result = h2load_load(spec, meter, work)
    ordered = sorted(result.latencies_us)
    p50 = float(ordered[len(ordered) // 2]) if ordered else math.nan
    window = Window(0, "fanout", "", result.calls, result.errors, result.elapsed,
                    result.calls * 256 / MIB / result.elapsed, p50, None, None,
                    result.cpu["upstream"])
    return window, result.cpu, result.rss_mb


async def _check_statuses(socket: str, streams: int, connections: int) -> dict[str, int]:
    """One burst of `streams` concurrent unary calls over `connections` channels: the count
    of each grpc-status that came back."""
    channels = [grpc.aio.insecure_channel(f"unix:{socket}",
                                          options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    counts: dict[str, int] = {}

    async def one(i: int) -> None:
        call = channels[i % connections].unary_unary(METHOD)
        try:
            await call(b"x" * 256, timeout=30)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        counts[code] = counts.get(code, 0) + 1

    try:
        await asyncio.gather(*(one(i) for i in range(streams)))
    finally:
        for channel in channels:
            await channel.close()
    return counts


SCENARIOS = {"stream": _stream_window, "fanout": _fanout_window}


def run_rounds(opts: Options, sockets: dict[str, str], meter: Meter,
               work: Path) -> list[Window]:
    windows = []
    for round_ in range(1, opts.rounds + 1):
        for scenario in opts.scenarios:
            for path in opts.paths:
                raw, cpu, rss = SCENARIOS[scenario](opts, sockets[path], meter, work)
                proxy = path in PROXIES
                window = Window(**{**asdict(raw), "round": round_, "path": path,
                                   "proxy_cpu_s": cpu.get(path) if proxy else None,
                                   "proxy_rss_mb": rss.get(path) if proxy else None})
                print(f"round {round_}/{opts.rounds}  {scenario:<6} {path:<13} "
                      f"{window.mb_per_s:8.1f} MB/s  {window.calls / window.elapsed:8.0f} "
                      f"calls/s  errors {window.errors}", file=sys.stderr, flush=True)
                windows.append(window)
    return windows


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    path: str
    mb_per_s: float
    calls_per_s: float
    p50_us: float
    errors: int
    of_direct: float | None
    proxy_cpu_ms_per_1k: float | None  # per 1000 calls (fanout) or per 1000 MiB (stream)
    proxy_rss_mb: float | None


def summarize(opts: Options, windows: list[Window]) -> list[Row]:
    rows = []
    for scenario in opts.scenarios:
        direct = None
        for path in opts.paths:
            mine = [w for w in windows if w.scenario == scenario and w.path == path]
            mb = statistics.median(w.mb_per_s for w in mine)
            direct = mb if path == "direct" else direct
            cpu = None
            if path in PROXIES:
                unit = (lambda w: w.mb_per_s * w.elapsed) if scenario == "stream" else (
                    lambda w: float(w.calls))
                cpu = statistics.median(
                    (w.proxy_cpu_s or 0.0) * 1e6 / max(1.0, unit(w)) for w in mine)
            rss = [w.proxy_rss_mb for w in mine if w.proxy_rss_mb is not None]
            rows.append(Row(
                scenario, path, mb, statistics.median(w.calls / w.elapsed for w in mine),
                statistics.median(w.p50_us for w in mine), sum(w.errors for w in mine),
                mb / direct if direct else None, cpu, max(rss) if rss else None,
            ))
    return rows


def table(rows: list[Row]) -> str:
    header = ["scenario", "path", "MB/s", "calls/s", "p50 us", "errors", "of direct",
              "proxy CPU ms/1k", "proxy RSS MB"]
    return _table(header, (
        [r.scenario, r.path, _cell(r.mb_per_s, ".1f"), _cell(r.calls_per_s, ".0f"),
         "-" if math.isnan(r.p50_us) else _cell(r.p50_us, ".0f"), _cell(r.errors, "d"),
         _cell(r.of_direct, ".2f"), _cell(r.proxy_cpu_ms_per_1k, ".1f"),
         _cell(r.proxy_rss_mb, ".0f")]
        for r in rows
    ))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def body(work: Path) -> dict[str, object]:
        with ExitStack() as stack:
            sockets, meter = start_servers(opts.paths, work, stack)
            checks = {}
            if "fanout" in opts.scenarios:
                for path in opts.paths:
                    checks[path] = asyncio.run(_check_statuses(
                        sockets[path], opts.fanout_streams, opts.fanout_connections))
            windows = run_rounds(opts, sockets, meter, work)
        rows = summarize(opts, windows)
        print(f"\nstream: {opts.streams} x {STREAM_METHOD} of {opts.messages} x 1 MiB, one "
              f"connection; fanout: {opts.fanout_streams} unary streams over "
              f"{opts.fanout_connections} connections; UDS; {opts.rounds} rounds x "
              f"{opts.seconds:g} s; {os.cpu_count()} CPUs; medians across rounds\n")
        print(table(rows))
        print("\nproxy CPU ms/1k: per 1000 MiB received (stream), per 1000 calls (fanout). "
              "RSS: largest after a window.")
        if checks:
            print("\ngrpc-status of one burst of the fanout's shape, per path: "
                  + "; ".join(f"{p} {c}" for p, c in checks.items()))
        return {
            "settings": {k: v for k, v in asdict(opts).items() if k != "json_path"},
            "cpus": os.cpu_count(), "status_check": checks,
            "summary": [asdict(r) for r in rows], "windows": [asdict(w) for w in windows],
        }

    return run_bench("scbs-", opts.json_path, body)


if __name__ == "__main__":
    sys.exit(main())
