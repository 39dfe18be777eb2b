"""Per-window samples, their medians across rounds, the comparison, and the tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from _load import LoadResult

PROXIES = ("haproxy", "daemon", "daemon-bare")  # paths whose process has the same name


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured window: one path, one concurrency, one round."""

    round: int
    path: str
    concurrency: int
    calls: int
    errors: int
    elapsed: float
    p50_us: float
    p99_us: float
    load_cpu: float
    cpu: dict[str, float]
    host_busy: float

    @property
    def rps(self) -> float:
        return self.calls / self.elapsed

    def cpu_ms_per_1k(self, process: str) -> float:
        return self.cpu[process] * 1e6 / max(1, self.calls)


def _percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted values (NaN if there are none)."""
    if not ordered:
        return math.nan
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def sample_of(round_: int, path: str, concurrency: int, result: LoadResult) -> Sample:
    ordered = sorted(result.latencies_us)
    return Sample(
        round=round_, path=path, concurrency=concurrency, calls=result.calls,
        errors=result.errors, elapsed=result.elapsed, p50_us=_percentile(ordered, 0.5),
        p99_us=_percentile(ordered, 0.99), load_cpu=result.load_cpu, cpu=result.cpu,
        host_busy=result.host_busy,
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians across rounds for one path at one concurrency."""

    path: str
    concurrency: int
    rounds: int
    errors: int
    rps: float
    p50_us: float
    p99_us: float
    proxy_cpu_ms_per_1k: float | None
    upstream_cpu_ms_per_1k: float
    load_cpu_pct: float
    host_busy_pct: float


def _median(samples: list[Sample], value: Callable[[Sample], float]) -> float:
    return statistics.median(value(s) for s in samples)


def summarize(path: str, concurrency: int, samples: list[Sample]) -> Summary:
    proxy = None
    if path in PROXIES:
        proxy = _median(samples, lambda s: s.cpu_ms_per_1k(path))
    return Summary(
        path=path, concurrency=concurrency, rounds=len(samples),
        errors=sum(s.errors for s in samples),
        rps=_median(samples, lambda s: s.rps),
        p50_us=_median(samples, lambda s: s.p50_us),
        p99_us=_median(samples, lambda s: s.p99_us),
        proxy_cpu_ms_per_1k=proxy,
        upstream_cpu_ms_per_1k=_median(samples, lambda s: s.cpu_ms_per_1k("upstream")),
        load_cpu_pct=_median(samples, lambda s: 100 * s.load_cpu / s.elapsed),
        host_busy_pct=_median(samples, lambda s: 100 * s.host_busy),
    )


@dataclass(frozen=True, slots=True)
class Comparison:
    """The proxies against the direct path at one concurrency (None: path not run)."""

    concurrency: int
    haproxy_added_p50_us: float | None
    daemon_added_p50_us: float | None
    daemon_added_p50_x_haproxy: float | None
    haproxy_rps_of_direct: float | None
    daemon_rps_of_direct: float | None
    haproxy_cpu_ms_per_1k: float | None
    daemon_cpu_ms_per_1k: float | None


def _against(direct: Summary | None, row: Summary | None) -> tuple[float | None, float | None]:
    """(added p50 in us, throughput as a fraction of direct) of one proxy row."""
    if direct is None or row is None:
        return None, None
    return row.p50_us - direct.p50_us, row.rps / direct.rps


def compare(concurrency: int, by_path: dict[str, Summary]) -> Comparison:
    direct = by_path.get("direct")
    h_added, h_share = _against(direct, by_path.get("haproxy"))
    d_added, d_share = _against(direct, by_path.get("daemon"))
    multiple = d_added / h_added if d_added is not None and h_added else None
    cpu = {p: by_path[p].proxy_cpu_ms_per_1k if p in by_path else None for p in PROXIES}
    return Comparison(
        concurrency=concurrency, haproxy_added_p50_us=h_added, daemon_added_p50_us=d_added,
        daemon_added_p50_x_haproxy=multiple, haproxy_rps_of_direct=h_share,
        daemon_rps_of_direct=d_share, haproxy_cpu_ms_per_1k=cpu["haproxy"],
        daemon_cpu_ms_per_1k=cpu["daemon"],
    )


def _cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def summary_table(summaries: list[Summary]) -> str:
    header = ["conc", "path", "rps", "p50 us", "p99 us", "errors", "proxy CPU ms/1k",
              "upstream CPU ms/1k", "load CPU %", "host busy %"]
    rows = (
        [_cell(s.concurrency, "d"), s.path, _cell(s.rps, ".0f"), _cell(s.p50_us, ".0f"),
         _cell(s.p99_us, ".0f"), _cell(s.errors, "d"), _cell(s.proxy_cpu_ms_per_1k, ".1f"),
         _cell(s.upstream_cpu_ms_per_1k, ".1f"), _cell(s.load_cpu_pct, ".0f"),
         _cell(s.host_busy_pct, ".0f")]
        for s in summaries
    )
    return _table(header, rows)


def comparison_table(comparisons: list[Comparison]) -> str:
    header = ["conc", "haproxy +p50 us", "daemon +p50 us", "daemon/haproxy +p50",
              "haproxy rps/direct", "daemon rps/direct", "haproxy CPU ms/1k",
              "daemon CPU ms/1k"]
    rows = (
        [_cell(c.concurrency, "d"), _cell(c.haproxy_added_p50_us, ".0f"),
         _cell(c.daemon_added_p50_us, ".0f"), _cell(c.daemon_added_p50_x_haproxy, ".1f", "x"),
         _cell(c.haproxy_rps_of_direct, ".2f"), _cell(c.daemon_rps_of_direct, ".2f"),
         _cell(c.haproxy_cpu_ms_per_1k, ".1f"), _cell(c.daemon_cpu_ms_per_1k, ".1f")]
        for c in comparisons
    )
    return _table(header, rows)
