"""Child processes for the benchmark: start, wait for readiness, stop, CPU time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

STOP_GRACE = 5.0


class BenchError(RuntimeError):
    """A setup or run failure; the message says what to look at."""


class Child:
    """A process in its own session (so its whole group can be stopped); stderr to a file."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, **popen: Any) -> None:
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self.popen = subprocess.Popen(
            argv, stderr=self._stderr, start_new_session=True, **popen
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr_tail(self, lines: int = 40) -> str:
        text = self.stderr_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty)"

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after a grace period."""
        self._signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.popen.wait(STOP_GRACE)
        self._signal(signal.SIGKILL)  # stragglers of the group, if any
        for stream in (self.popen.stdin, self.popen.stdout, self._stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)


@contextmanager
def running(name: str, argv: Sequence[str], log_dir: Path, **popen: Any) -> Iterator[Child]:
    child = Child(name, argv, log_dir, **popen)
    try:
        yield child
    finally:
        child.stop()


def wait_ready(child: Child, probe: Callable[[], bool], timeout: float) -> None:
    """Poll `probe` until it returns True; fail with the child's stderr if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise BenchError(
                f"{child.name} exited with {child.popen.returncode}; stderr:\n"
                + child.stderr_tail()
            )
        if probe():
            return
        time.sleep(0.1)
    raise BenchError(
        f"{child.name} not ready after {timeout:.0f} s; stderr:\n" + child.stderr_tail()
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads included (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields from 3 (state) on; comm may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def host_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total
