"""Unary gRPC over Unix sockets: direct vs HAProxy vs the sidecar daemon, side by side.

Starts an echo upstream, HAProxy and the daemon as separate processes, then
drives `/bench.Echo/Unary` (256-byte payload) through each path at each
concurrency for fixed-duration windows, interleaving the paths within every
round. Prints medians across rounds; `--json PATH` also writes every sample.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from _cli import add_window_options, run_bench
from _load import LOADS, METHOD, LoadSpec, Meter
from _procs import BenchError, Child, running, wait_ready
from _report import Sample, compare, comparison_table, sample_of, summarize, summary_table

PATHS = ("direct", "haproxy", "daemon", "daemon-bare")
DEFAULT_PATHS = ("direct", "haproxy", "daemon")
UPSTREAM = Path(__file__).with_name("_upstream.py")
REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
PROBE_TIMEOUT = 0.5

HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc_in
    bind unix@{listen} proto h2
    default_backend upstream
backend upstream
    server up unix@{upstream} proto h2
"""

DAEMON_CONFIG = """\
listeners:
  - name: app
    socket: {listen}
    mode: "0660"
    default_target: up
admin: {{address: null}}
log: {{level: warning}}
telemetry: {{metrics: {{enabled: {metrics}}}}}
targets:
  up: {{kind: grpc, address: "unix://{upstream}"}}
"""


@dataclass(frozen=True, slots=True)
class Options:
    paths: tuple[str, ...]
    concurrency: tuple[int, ...]
    seconds: float
    rounds: int
    warmup: float
    load: str
    load_procs: int
    payload: int
    json_path: Path | None


def _path_list(text: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    if not paths or any(p not in PATHS for p in paths):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(PATHS)}")
    return paths


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--paths", type=_path_list, default=DEFAULT_PATHS,
                   help="default: direct,haproxy,daemon; daemon-bare is the daemon with "
                        "metrics off, to measure telemetry's cost")
    add_window_options(p)
    p.add_argument("--load", choices=sorted(LOADS), default="python")
    p.add_argument("--load-procs", type=int, default=1, help="python load processes")
    p.add_argument("--payload", type=int, default=256, help="request bytes")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.seconds <= 0 or a.warmup < 0 or a.load_procs < 1 or a.payload < 0:
        p.error("--rounds and --load-procs must be >= 1, --seconds > 0, the rest >= 0")
    return Options(a.paths, a.concurrency, a.seconds, a.rounds, a.warmup, a.load,
                   a.load_procs, a.payload, a.json_path)


def _echoes(socket: str) -> bool:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        try:
            return bool(channel.unary_unary(METHOD)(b"ping", timeout=PROBE_TIMEOUT) == b"ping")
        except grpc.RpcError:
            return False


def _serving(socket: str) -> bool:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _start_upstream(work: Path, stack: ExitStack) -> tuple[str, Child]:
    socket = str(work / "upstream.sock")
    child = stack.enter_context(running("upstream", [sys.executable, str(UPSTREAM), socket], work))
    wait_ready(child, lambda: _echoes(socket), READY_TIMEOUT)
    return socket, child


def _start_haproxy(work: Path, upstream: str, stack: ExitStack) -> tuple[str, Child]:
    socket, config = str(work / "haproxy.sock"), work / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(listen=socket, upstream=upstream))
    child = stack.enter_context(running("haproxy", ["haproxy", "-db", "-f", str(config)], work))
    wait_ready(child, lambda: _echoes(socket), READY_TIMEOUT)
    return socket, child


def _start_daemon(work: Path, upstream: str, stack: ExitStack, *, name: str = "daemon",
                  metrics: bool = True) -> tuple[str, Child]:
    socket, config = str(work / f"{name}.sock"), work / f"{name}.yaml"
    config.write_text(DAEMON_CONFIG.format(listen=socket, upstream=upstream,
                                           metrics=str(metrics).lower()))
    argv = [sys.executable, "-m", "sidecar", "run", "--config", str(config)]
    child = stack.enter_context(running(name, argv, work, cwd=REPO))
    wait_ready(child, lambda: _serving(socket) and _echoes(socket), READY_TIMEOUT)
    return socket, child


def _start_bare_daemon(work: Path, upstream: str, stack: ExitStack) -> tuple[str, Child]:
    """The daemon with metrics off too (tracing and the access log are off in both)."""
    return _start_daemon(work, upstream, stack, name="daemon-bare", metrics=False)


PROXY_STARTERS = {"haproxy": _start_haproxy, "daemon": _start_daemon,
                  "daemon-bare": _start_bare_daemon}


def start_servers(paths: tuple[str, ...], work: Path,
                  stack: ExitStack) -> tuple[dict[str, str], Meter]:
    """Start the upstream and the proxies asked for: each path's socket, and a CPU meter."""
    upstream, child = _start_upstream(work, stack)
    sockets, pids = {"direct": upstream}, {"upstream": child.pid}
    for path in paths:
        if path in PROXY_STARTERS:
            sockets[path], proxy = PROXY_STARTERS[path](work, upstream, stack)
            pids[path] = proxy.pid
    return sockets, Meter(pids)


def run_rounds(opts: Options, sockets: dict[str, str], meter: Meter, work: Path) -> list[Sample]:
    """Every round runs every concurrency on every path, so drift hits all paths alike."""
    samples = []
    for round_ in range(1, opts.rounds + 1):
        for concurrency in opts.concurrency:
            for path in opts.paths:
                spec = LoadSpec(sockets[path], concurrency, opts.seconds, opts.warmup,
                                opts.payload, opts.load_procs)
                sample = sample_of(round_, path, concurrency, LOADS[opts.load](spec, meter, work))
                print(f"round {round_}/{opts.rounds}  c={concurrency:<3} {path:<8} "
                      f"{sample.rps:8.0f} rps  p50 {sample.p50_us:6.0f} us  "
                      f"p99 {sample.p99_us:6.0f} us  errors {sample.errors}",
                      file=sys.stderr, flush=True)
                samples.append(sample)
    return samples


def report(opts: Options, samples: list[Sample]) -> dict[str, object]:
    summaries = [
        summarize(path, c, [s for s in samples if s.path == path and s.concurrency == c])
        for c in opts.concurrency for path in opts.paths
    ]
    comparisons = [
        row for c in opts.concurrency
        for row in compare(c, {s.path: s for s in summaries if s.concurrency == c})
    ]
    load = "h2load, 1 connection" if opts.load == "h2load" else f"python x{opts.load_procs}"
    print(f"\nunary {METHOD}, {opts.payload} B, over UDS; load: {load}; {opts.rounds} rounds"
          f" x {opts.seconds:g} s; {os.cpu_count()} CPUs; medians across rounds\n")
    print(summary_table(summaries))
    if len(opts.paths) > 1:
        print("\n+p50: p50 minus direct p50.  CPU ms/1k: that process's CPU per 1000 calls.\n")
        print(comparison_table(comparisons))
    return {
        "settings": {k: v for k, v in asdict(opts).items() if k != "json_path"},
        "cpus": os.cpu_count(),
        "summary": [asdict(s) for s in summaries],
        "comparison": [asdict(c) for c in comparisons],
        "samples": [{**asdict(s), "rps": s.rps} for s in samples],
    }


def _preflight(opts: Options) -> None:
    needed = {"haproxy": "haproxy" in opts.paths, "h2load": opts.load == "h2load"}
    missing = [tool for tool, wanted in needed.items() if wanted and not shutil.which(tool)]
    if missing:
        raise BenchError(f"not installed: {', '.join(missing)} (apt-get install -y haproxy "
                         "nghttp2-client)")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def body(work: Path) -> dict[str, object]:
        _preflight(opts)
        with ExitStack() as stack:
            sockets, meter = start_servers(opts.paths, work, stack)
            samples = run_rounds(opts, sockets, meter, work)
        return report(opts, samples)

    return run_bench("scb-", opts.json_path, body)


if __name__ == "__main__":
    sys.exit(main())
