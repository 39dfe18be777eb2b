"""The two load generators, each measuring one fixed-duration window.

`python`: processes of `_loadgen.py` (grpc.aio on uvloop), started per window,
warmed up, then released together. `h2load`: nghttp2's C load generator, one
connection with CONCURRENCY streams, posting a gRPC-framed message.
Around the window a `Meter` reads the CPU time of the server processes.
"""

from __future__ import annotations

import json
import re
import resource
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from _procs import BenchError, Child, cpu_seconds, host_busy_jiffies, rss_mb, running

LOADGEN = Path(__file__).with_name("_loadgen.py")
METHOD = "/bench.Echo/Unary"
WATCHDOG_SLACK = 60.0  # seconds past warm-up + window before a load process is killed


@dataclass(frozen=True, slots=True)
class LoadSpec:
    socket: str
    concurrency: int
    seconds: float
    warmup: float
    payload: int
    processes: int = 1
    connections: int = 1  # h2load: CONCURRENCY streams spread over this many connections


@dataclass(slots=True)
class LoadResult:
    calls: int
    errors: int
    elapsed: float
    load_cpu: float  # CPU seconds of the load generator during the window
    latencies_us: list[int]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per server process
    host_busy: float = 0.0  # fraction of all CPUs busy during the window
    rss_mb: dict[str, float] = field(default_factory=dict)  # per server process, at the end


class Meter:
    """CPU seconds of named processes, and host busy fraction, between start and stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._cpu: dict[str, float] = {}
        self._host = (0, 0)

    def start(self) -> None:
        self._cpu = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._host = host_busy_jiffies()

    def stop(self) -> tuple[dict[str, float], float]:
        cpu = {name: cpu_seconds(pid) - self._cpu[name] for name, pid in self._pids.items()}
        busy, total = host_busy_jiffies()
        return cpu, (busy - self._host[0]) / max(1, total - self._host[1])

    def rss_mb(self) -> dict[str, float]:
        """Resident MB of each process now."""
        return {name: rss_mb(pid) for name, pid in self._pids.items()}


LoadRunner = Callable[[LoadSpec, Meter, Path], LoadResult]


def _split(total: int, parts: int) -> list[int]:
    """`total` concurrent callers spread over at most `parts` processes."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _read_line(child: Child) -> str:
    assert child.popen.stdout is not None
    line: str = child.popen.stdout.readline()
    if not line:
        raise BenchError(f"{child.name} exited early; stderr:\n{child.stderr_tail()}")
    return line


def _release(children: list[Child]) -> None:
    for child in children:
        if _read_line(child).strip() != "warm":
            raise BenchError(f"{child.name}: unexpected output before the window")
    for child in children:
        assert child.popen.stdin is not None
        child.popen.stdin.write("go\n")
        child.popen.stdin.flush()


def _parse(line: str) -> LoadResult:
    data = json.loads(line)
    return LoadResult(
        calls=int(data["calls"]), errors=int(data["errors"]), elapsed=float(data["elapsed"]),
        load_cpu=float(data["cpu"]), latencies_us=list(data["latencies_us"]),
    )


def _merge(parts: list[LoadResult]) -> LoadResult:
    return LoadResult(
        calls=sum(p.calls for p in parts),
        errors=sum(p.errors for p in parts),
        elapsed=max(p.elapsed for p in parts),
        load_cpu=sum(p.load_cpu for p in parts),
        latencies_us=[us for p in parts for us in p.latencies_us],
    )


def _kill_all(children: list[Child]) -> None:
    for child in children:
        child.kill()


def python_load(spec: LoadSpec, meter: Meter, log_dir: Path) -> LoadResult:
    with ExitStack() as stack:
        children = [
            stack.enter_context(running(
                f"loadgen{i}",
                [sys.executable, str(LOADGEN), f"unix:{spec.socket}", str(concurrency),
                 str(spec.seconds), str(spec.warmup), str(spec.payload)],
                log_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            ))
            for i, concurrency in enumerate(_split(spec.concurrency, spec.processes))
        ]
        watchdog = threading.Timer(
            spec.warmup + spec.seconds + WATCHDOG_SLACK, _kill_all, (children,)
        )
        watchdog.start()
        try:
            _release(children)
            meter.start()
            lines = [_read_line(child) for child in children]
            usage = meter.stop()
        finally:
            watchdog.cancel()
    result = _merge([_parse(line) for line in lines])
    result.cpu, result.host_busy = usage
    result.rss_mb = meter.rss_mb()
    return result


def write_grpc_message(path: Path, payload: int) -> None:
    """One gRPC length-prefixed message (uncompressed) for h2load's `-d`."""
    path.write_bytes(b"\x00" + struct.pack(">I", payload) + b"x" * payload)


def h2load_run(spec: LoadSpec, message: Path, seconds: float, *extra: str,
               method: str = METHOD) -> str:
    """One h2load window (its stdout): CONCURRENCY streams over `spec.connections`."""
    streams = -(-spec.concurrency // spec.connections)
    argv = [
        "h2load", f"--base-uri=unix:{spec.socket}", "-t1", f"-c{spec.connections}",
        f"-m{streams}", f"-D{round(seconds * 1000)}ms", f"--data={message}",
        "-H", "content-type: application/grpc", "-H", "te: trailers", *extra,
        f"http://localhost{method}",
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + WATCHDOG_SLACK, check=True
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"h2load did not finish: {e}") from e
    except subprocess.CalledProcessError as e:
        raise BenchError(f"h2load failed ({e.returncode}):\n{e.stdout}{e.stderr}") from e
    return done.stdout


def h2load_elapsed(h2load_stdout: str) -> float:
    found = re.search(r"finished in ([\d.]+)(us|ms|s),", h2load_stdout)
    if found is None:
        raise BenchError(f"cannot read h2load's duration from:\n{h2load_stdout}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[found.group(2)]
    return float(found.group(1)) * scale


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def h2load_load(spec: LoadSpec, meter: Meter, log_dir: Path) -> LoadResult:
    message, log = log_dir / "message.bin", log_dir / "h2load.log"
    write_grpc_message(message, spec.payload)
    h2load_run(spec, message, spec.warmup)
    log.unlink(missing_ok=True)  # h2load appends to an existing log
    load_cpu = children_cpu()
    meter.start()
    stdout = h2load_run(spec, message, spec.seconds, f"--log-file={log}")
    usage = meter.stop()
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    result = LoadResult(
        calls=sum(1 for row in rows if row[1] == "200"),
        errors=sum(1 for row in rows if row[1] != "200"),
        elapsed=h2load_elapsed(stdout),
        load_cpu=children_cpu() - load_cpu,
        latencies_us=[int(row[2]) for row in rows if row[1] == "200"],
    )
    result.cpu, result.host_busy = usage
    result.rss_mb = meter.rss_mb()
    return result


LOADS: dict[str, LoadRunner] = {"python": python_load, "h2load": h2load_load}
