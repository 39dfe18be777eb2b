"""A/B of the daemon's CPU per proxied call across checkouts, interleaved, for small changes.

`grpc_unary.py` compares the daemon with other proxies; this compares the daemon with
itself. Each checkout (a folder holding a `sidecar` package, e.g. a `git worktree` of an
older commit) runs as its own daemon process in front of the same kind of upstream, and
h2load sends it a fixed number of unary calls (`--calls`) after a warm-up; the daemon's
user + system CPU over those calls, divided by their number, is one sample. Rounds take
the checkouts in turn, so drift on the host hits them alike. Prints min and median per
checkout: on a shared 2-core host single runs of the same code differ by 5-15 %, so a
change smaller than that needs several rounds and a look at both figures.

    git worktree add /tmp/base HEAD~1
    .venv/bin/python bench/ab_daemons.py /tmp/base . --rounds 5
    .venv/bin/python bench/ab_daemons.py .:metrics=false . --concurrency 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _procs import BenchError, cpu_seconds, running, wait_ready
from grpc_unary import DAEMON_CONFIG, UPSTREAM, _echoes, _serving

READY_TIMEOUT = 15.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("checkouts", nargs="+",
                   help="folders holding a sidecar package; `DIR:metrics=false` turns "
                        "metrics off for that one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=15_000, help="measured calls per sample")
    p.add_argument("--warmup", type=int, default=2_000, help="calls before each sample")
    p.add_argument("--concurrency", type=int, default=64, help="h2load streams")
    p.add_argument("--payload", type=int, default=256)
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy (native frames) over each checkout's measured calls of the "
                        "last round: DIR/<n>.raw, collapsed stacks, one per checkout")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.calls < 1 or a.concurrency < 1:
        p.error("--rounds, --calls and --concurrency must be >= 1")
    return a


def sample(spec: str, args: argparse.Namespace, work: Path,
           profile: Path | None = None) -> float:
    """One daemon of checkout `spec`: CPU microseconds per call over `args.calls` calls."""
    folder, _, option = spec.partition(":")
    metrics = "false" if option == "metrics=false" else "true"
    repo = str(Path(folder).resolve())
    run = Path(tempfile.mkdtemp(prefix="ab-", dir=work))
    upstream, listen = str(run / "up.sock"), str(run / "d.sock")
    (run / "d.yaml").write_text(DAEMON_CONFIG.format(listen=listen, upstream=upstream,
                                              metrics=metrics))
    message = run / "message.bin"
    message.write_bytes(b"\x00" + args.payload.to_bytes(4, "big") + b"x" * args.payload)
    h2load = ["h2load", f"--base-uri=unix:{listen}", "-t1", "-c1", f"-m{args.concurrency}",
              f"--data={message}", "-H", "content-type: application/grpc",
              "-H", "te: trailers", "http://localhost/bench.Echo/Unary"]
    env = {**os.environ, "PYTHONPATH": repo}
    with running("upstream", [sys.executable, str(UPSTREAM), upstream], run) as up:
        wait_ready(up, lambda: _echoes(upstream), READY_TIMEOUT)
        daemon_argv = [sys.executable, "-m", "sidecar", "run", "--config", str(run / "d.yaml")]
        with running("daemon", daemon_argv, run, cwd=repo, env=env) as daemon:
            wait_ready(daemon, lambda: _serving(listen) and _echoes(listen), READY_TIMEOUT)
            subprocess.run([*h2load, f"-n{args.warmup}"], capture_output=True, check=True)
            spy = None if profile is None else subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--native",
                 "-r", "400", "-f", "raw", "-o", str(profile), "--pid", str(daemon.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before = cpu_seconds(daemon.pid)
            done = subprocess.run([*h2load, f"-n{args.calls}"], capture_output=True,
                                  text=True, check=True)
            used = cpu_seconds(daemon.pid) - before
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
                spy.wait(30)
    if f"{args.calls} succeeded" not in done.stdout:
        raise BenchError(f"{spec}: not every call succeeded:\n{done.stdout}")
    calls: int = args.calls
    return used * 1e6 / calls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("h2load"):
        print("not installed: h2load (apt-get install -y nghttp2-client)", file=sys.stderr)
        return 1
    results: dict[str, list[float]] = {spec: [] for spec in args.checkouts}
    work = Path(tempfile.mkdtemp(prefix="scab-", dir="/tmp"))
    try:
        for round_ in range(1, args.rounds + 1):
            for n, spec in enumerate(args.checkouts, 1):
                last = args.profile is not None and round_ == args.rounds
                if last:
                    args.profile.mkdir(parents=True, exist_ok=True)
                us = sample(spec, args, work, args.profile / f"{n}.raw" if last else None)
                results[spec].append(us)
                print(f"round {round_}/{args.rounds}  {spec}: {us:.0f} us/call",
                      file=sys.stderr, flush=True)
    except BenchError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndaemon CPU per proxied call (h2load, {args.concurrency} streams, "
          f"{args.calls} calls a sample, {args.rounds} rounds)\n")
    for spec, values in results.items():
        print(f"{spec}: min {min(values):.0f}  median {statistics.median(values):.0f} us  "
              f"samples {[round(v) for v in values]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
