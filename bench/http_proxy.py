"""HTTP GET straight to an upstream vs through the daemon's HttpProxy.Call, side by side.

Starts an HTTP upstream on 127.0.0.1 (aiohttp on uvloop, or nginx) and the
daemon with one http target pointing at it, then drives `GET /item` through
each path at each concurrency for fixed-duration windows, interleaving the
paths within every round. Prints medians across rounds; `--json PATH` also
writes every sample. See bench/README.md.

For an A/B of the daemon itself, `--checkout DIR` runs it from another folder holding a
`sidecar` package (a `git worktree` of an older commit); run both in turn:

    git worktree add /tmp/base HEAD~1
    for i in 1 2 3; do for d in /tmp/base .; do
        .venv/bin/python bench/http_proxy.py --load h2load --checkout $d --rounds 1; done; done
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc

from _cli import add_window_options, run_bench
from _load import (
    WATCHDOG_SLACK,
    LoadResult,
    Meter,
    _parse,
    _read_line,
    _release,
    children_cpu,
    h2load_elapsed,
)
from _procs import BenchError, Child, running, wait_ready
from _report import Sample, Summary, _cell, _table, sample_of, summarize, summary_table

PATHS = ("direct", "daemon")
UPSTREAMS = ("aiohttp", "nginx")
UPSTREAM = Path(__file__).with_name("_http_upstream.py")
LOADGEN = Path(__file__).with_name("_http_loadgen.py")
REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
PROBE_TIMEOUT = 0.5
TARGET, ITEM = "web", "/item"

DAEMON_CONFIG = """\
listeners:
  - name: app
    socket: {listen}
admin: {{address: null}}
log: {{level: warning}}
targets:
  {target}:
    kind: http
    base_url: "{base_url}"
    pool: {{max_connections: 100, max_per_host: 100}}
"""

# One process (no master), so /proc/PID/stat of the child holds all of nginx's CPU.
NGINX_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type application/octet-stream;
        root {work}/www;
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Options:
    concurrency: tuple[int, ...]
    seconds: float
    rounds: int
    warmup: float
    payload: int
    upstream: str
    load: str
    checkout: Path
    json_path: Path | None


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_window_options(p)
    p.add_argument("--payload", type=int, default=256, help="response body bytes of GET /item")
    p.add_argument("--upstream", choices=UPSTREAMS, default="aiohttp")
    p.add_argument("--load", choices=("python", "h2load"), default="python",
                   help="h2load: `h2load --h1` (C connections) straight at the upstream, "
                        "h2load posting gRPC frames (C streams, one connection) to the daemon")
    p.add_argument("--checkout", type=Path, default=REPO,
                   help="folder whose sidecar package the daemon runs (default: this one)")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.seconds <= 0 or a.warmup < 0 or a.payload < 0:
        p.error("--rounds must be >= 1, --seconds > 0, the rest >= 0")
    return Options(a.concurrency, a.seconds, a.rounds, a.warmup, a.payload, a.upstream,
                   a.load, a.checkout.resolve(), a.json_path)


# --- readiness probes ---------------------------------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str, size: int) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=PROBE_TIMEOUT) as response:
            return bool(response.status == 200 and len(response.read()) == size)
    except (OSError, urllib.error.URLError):
        return False


def _proxied_ok(listen: str, size: int) -> bool:
    """The daemon serves health and answers a real HttpProxy.Call with the right body."""
    request = sidecar_pb2.HttpRequest(target=TARGET, method="GET", path=ITEM)
    with grpc.insecure_channel(f"unix:{listen}") as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
            reply = sidecar_pb2_grpc.HttpProxyStub(channel).Call(request, timeout=PROBE_TIMEOUT)
        except grpc.RpcError:
            return False
    serving = health.status == health_pb2.HealthCheckResponse.SERVING
    return bool(serving and reply.status == 200 and len(reply.body) == size)


# --- servers ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_aiohttp(work: Path, port: int, size: int, stack: ExitStack) -> Child:
    argv = [sys.executable, str(UPSTREAM), str(port), str(size)]
    return stack.enter_context(running("upstream", argv, work))


def _start_nginx(work: Path, port: int, size: int, stack: ExitStack) -> Child:
    (work / "www").mkdir()
    (work / "www" / ITEM.lstrip("/")).write_bytes(b"x" * size)
    (work / "nginx-tmp").mkdir()
    config = work / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(work=work, port=port))
    argv = ["nginx", "-p", str(work), "-e", "stderr", "-c", str(config)]
    return stack.enter_context(running("upstream", argv, work))


UPSTREAM_STARTERS: dict[str, Callable[[Path, int, int, ExitStack], Child]] = {
    "aiohttp": _start_aiohttp, "nginx": _start_nginx,
}


def start_upstream(opts: Options, work: Path, stack: ExitStack) -> tuple[str, Child]:
    """The upstream, answering `GET /item`: its base URL and process."""
    port = _free_port()
    child = UPSTREAM_STARTERS[opts.upstream](work, port, opts.payload, stack)
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(child, lambda: _http_ok(base_url + ITEM, opts.payload), READY_TIMEOUT)
    return base_url, child


def start_daemon(work: Path, base_url: str, size: int, checkout: Path,
                 stack: ExitStack) -> tuple[str, Child]:
    listen, config = str(work / "app.sock"), work / "sidecar.yaml"
    config.write_text(DAEMON_CONFIG.format(listen=listen, target=TARGET, base_url=base_url))
    argv = [sys.executable, "-m", "sidecar", "run", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    child = stack.enter_context(running("daemon", argv, work, cwd=checkout, env=env))
    wait_ready(child, lambda: _proxied_ok(listen, size), READY_TIMEOUT)
    return listen, child


# --- load ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    path: str
    target: str  # URL for direct, unix:SOCKET for daemon
    concurrency: int


def measure(opts: Options, window: Window, meter: Meter, work: Path) -> LoadResult:
    """One window of the chosen load generator between meter reads."""
    if opts.load == "h2load":
        return _h2load_window(opts, window, meter, work)
    return _python_window(opts, window, meter, work)


def _h2load_window(opts: Options, window: Window, meter: Meter, work: Path) -> LoadResult:
    """h2load, warmed up then measured: HTTP/1.1 over `concurrency` connections to the
    upstream, or gRPC over one connection with `concurrency` streams to the daemon (h2load
    checks the HTTP status only; the daemon's answers were checked at start)."""
    if window.path == "direct":
        argv = ["h2load", "--h1", "-t1", f"-c{window.concurrency}", "-m1", window.target]
    else:
        message = work / "http_request.bin"
        request = sidecar_pb2.HttpRequest(target=TARGET, method="GET", path=ITEM)
        body = request.SerializeToString()
        message.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
        argv = ["h2load", f"--base-uri={window.target}", "-t1", "-c1",
                f"-m{window.concurrency}", f"--data={message}",
                "-H", "content-type: application/grpc", "-H", "te: trailers",
                "http://localhost/sidecar.v1.HttpProxy/Call"]
    log = work / "h2load.log"

    def run_for(seconds: float, *extra: str) -> str:
        done = subprocess.run([*argv[:1], f"-D{round(seconds * 1000)}ms", *extra, *argv[1:]],
                              capture_output=True, text=True,
                              timeout=seconds + WATCHDOG_SLACK, check=True)
        return done.stdout

    run_for(opts.warmup)
    log.unlink(missing_ok=True)
    load_cpu = children_cpu()
    meter.start()
    stdout = run_for(opts.seconds, f"--log-file={log}")
    usage = meter.stop()
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    result = LoadResult(
        calls=sum(1 for row in rows if row[1] == "200"),
        errors=sum(1 for row in rows if row[1] != "200"),
        elapsed=h2load_elapsed(stdout), load_cpu=children_cpu() - load_cpu,
        latencies_us=[int(row[2]) for row in rows if row[1] == "200"])
    result.cpu, result.host_busy = usage
    result.rss_mb = meter.rss_mb()
    return result


def _python_window(opts: Options, window: Window, meter: Meter, work: Path) -> LoadResult:
    """One `_http_loadgen.py` process: warm up, then one measured window between meter reads."""
    argv = [sys.executable, str(LOADGEN), window.path, window.target, str(window.concurrency),
            str(opts.seconds), str(opts.warmup), str(opts.payload)]
    with running("loadgen", argv, work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 text=True) as child:
        watchdog = threading.Timer(opts.warmup + opts.seconds + WATCHDOG_SLACK, child.kill)
        watchdog.start()
        try:
            _release([child])
            meter.start()
            line = _read_line(child)
            usage = meter.stop()
        finally:
            watchdog.cancel()
    result = _parse(line)
    result.cpu, result.host_busy = usage
    result.rss_mb = meter.rss_mb()
    return result


def run_rounds(opts: Options, targets: dict[str, str], meter: Meter, work: Path) -> list[Sample]:
    """Every round runs every concurrency on both paths, so drift hits them alike."""
    samples = []
    for round_ in range(1, opts.rounds + 1):
        for concurrency in opts.concurrency:
            for path in PATHS:
                result = measure(opts, Window(path, targets[path], concurrency), meter, work)
                sample = sample_of(round_, path, concurrency, result)
                print(f"round {round_}/{opts.rounds}  c={concurrency:<3} {path:<6} "
                      f"{sample.rps:8.0f} rps  p50 {sample.p50_us:6.0f} us  "
                      f"p99 {sample.p99_us:6.0f} us  errors {sample.errors}",
                      file=sys.stderr, flush=True)
                samples.append(sample)
    return samples


# --- report -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Comparison:
    """The daemon path against the direct path at one concurrency."""

    concurrency: int
    daemon_added_p50_us: float
    daemon_added_p99_us: float
    daemon_rps_of_direct: float
    daemon_cpu_ms_per_1k: float | None
    upstream_cpu_ms_per_1k_direct: float
    upstream_cpu_ms_per_1k_daemon: float


def compare(direct: Summary, daemon: Summary) -> Comparison:
    return Comparison(
        concurrency=direct.concurrency,
        daemon_added_p50_us=daemon.p50_us - direct.p50_us,
        daemon_added_p99_us=daemon.p99_us - direct.p99_us,
        daemon_rps_of_direct=daemon.rps / direct.rps,
        daemon_cpu_ms_per_1k=daemon.proxy_cpu_ms_per_1k,
        upstream_cpu_ms_per_1k_direct=direct.upstream_cpu_ms_per_1k,
        upstream_cpu_ms_per_1k_daemon=daemon.upstream_cpu_ms_per_1k,
    )


def comparison_table(comparisons: list[Comparison]) -> str:
    header = ["conc", "daemon +p50 us", "daemon +p99 us", "daemon rps/direct",
              "daemon CPU ms/1k", "upstream CPU ms/1k direct", "upstream CPU ms/1k daemon"]
    rows = (
        [_cell(c.concurrency, "d"), _cell(c.daemon_added_p50_us, ".0f"),
         _cell(c.daemon_added_p99_us, ".0f"), _cell(c.daemon_rps_of_direct, ".2f"),
         _cell(c.daemon_cpu_ms_per_1k, ".1f"), _cell(c.upstream_cpu_ms_per_1k_direct, ".1f"),
         _cell(c.upstream_cpu_ms_per_1k_daemon, ".1f")]
        for c in comparisons
    )
    return _table(header, rows)


def report(opts: Options, samples: list[Sample]) -> dict[str, object]:
    summaries = {
        (path, c): summarize(path, c, [s for s in samples if s.path == path and s.concurrency == c])
        for c in opts.concurrency for path in PATHS
    }
    comparisons = [
        compare(summaries["direct", c], summaries["daemon", c]) for c in opts.concurrency
    ]
    print(f"\nGET {ITEM} ({opts.payload} B body) over TCP loopback; upstream: {opts.upstream};"
          f" daemon via HttpProxy.Call over UDS from {opts.checkout}; load: {opts.load};"
          f" {opts.rounds} rounds x {opts.seconds:g} s; {os.cpu_count()} CPUs;"
          " medians across rounds\n")
    print(summary_table(list(summaries.values())))
    print("\n+p50/+p99: daemon minus direct.  CPU ms/1k: that process's CPU per 1000 calls.\n")
    print(comparison_table(comparisons))
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v
                     for k, v in asdict(opts).items() if k != "json_path"},
        "cpus": os.cpu_count(),
        "summary": [asdict(s) for s in summaries.values()],
        "comparison": [asdict(c) for c in comparisons],
        "samples": [{**asdict(s), "rps": s.rps} for s in samples],
    }


# --- main ---------------------------------------------------------------------------------

def _preflight(opts: Options) -> None:
    if opts.upstream == "nginx" and not shutil.which("nginx"):
        raise BenchError("not installed: nginx (apt-get install -y nginx-light)")
    if opts.load == "h2load" and not shutil.which("h2load"):
        raise BenchError("not installed: h2load (apt-get install -y nghttp2-client)")


def run(opts: Options, work: Path) -> list[Sample]:
    with ExitStack() as stack:
        base_url, upstream = start_upstream(opts, work, stack)
        listen, daemon = start_daemon(work, base_url, opts.payload, opts.checkout, stack)
        meter = Meter({"upstream": upstream.pid, "daemon": daemon.pid})
        targets = {"direct": base_url + ITEM, "daemon": f"unix:{listen}"}
        return run_rounds(opts, targets, meter, work)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)

    def body(work: Path) -> dict[str, object]:
        _preflight(opts)
        return report(opts, run(opts, work))

    return run_bench("scbh-", opts.json_path, body)


if __name__ == "__main__":
    sys.exit(main())
