"""Per-window samples, their medians across rounds, the comparison, and the tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from _load import LoadResult

PROXIES = ("haproxy", "daemon", "daemon-bare")  # paths named as their process


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
    rss_mb: dict[str, float]

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
        host_busy=result.host_busy, rss_mb=result.rss_mb,
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
    proxy_rss_mb: float | None
    upstream_cpu_ms_per_1k: float
    load_cpu_pct: float
    host_busy_pct: float


def _median(samples: list[Sample], value: Callable[[Sample], float]) -> float:
    return statistics.median(value(s) for s in samples)


def summarize(path: str, concurrency: int, samples: list[Sample]) -> Summary:
    proxy = rss = None
    if path in PROXIES:
        proxy = _median(samples, lambda s: s.cpu_ms_per_1k(path))
        rss = max(s.rss_mb.get(path, 0.0) for s in samples)
    return Summary(
        path=path, concurrency=concurrency, rounds=len(samples),
        errors=sum(s.errors for s in samples),
        rps=_median(samples, lambda s: s.rps),
        p50_us=_median(samples, lambda s: s.p50_us),
        p99_us=_median(samples, lambda s: s.p99_us),
        proxy_cpu_ms_per_1k=proxy, proxy_rss_mb=rss,
        upstream_cpu_ms_per_1k=_median(samples, lambda s: s.cpu_ms_per_1k("upstream")),
        load_cpu_pct=_median(samples, lambda s: 100 * s.load_cpu / s.elapsed),
        host_busy_pct=_median(samples, lambda s: 100 * s.host_busy),
    )


@dataclass(frozen=True, slots=True)
class Comparison:
    """One proxy against the direct path (and HAProxy) at one concurrency."""

    concurrency: int
    path: str
    added_p50_us: float | None
    added_p50_x_haproxy: float | None
    rps_of_direct: float | None
    cpu_ms_per_1k: float | None
    rss_mb: float | None


def compare(concurrency: int, by_path: dict[str, Summary]) -> list[Comparison]:
    """A row per proxy path that ran (None where direct or HAProxy did not)."""
    direct, haproxy = by_path.get("direct"), by_path.get("haproxy")
    h_added = haproxy.p50_us - direct.p50_us if haproxy and direct else None
    rows = []
    for path in PROXIES:
        row = by_path.get(path)
        if row is None:
            continue
        added = row.p50_us - direct.p50_us if direct else None
        rows.append(Comparison(
            concurrency=concurrency, path=path, added_p50_us=added,
            added_p50_x_haproxy=added / h_added if added is not None and h_added else None,
            rps_of_direct=row.rps / direct.rps if direct else None,
            cpu_ms_per_1k=row.proxy_cpu_ms_per_1k, rss_mb=row.proxy_rss_mb,
        ))
    return rows


def _cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def summary_table(summaries: list[Summary]) -> str:
    header = ["conc", "path", "rps", "p50 us", "p99 us", "errors", "proxy CPU ms/1k",
              "proxy RSS MB", "upstream CPU ms/1k", "load CPU %", "host busy %"]
    rows = (
        [_cell(s.concurrency, "d"), s.path, _cell(s.rps, ".0f"), _cell(s.p50_us, ".0f"),
         _cell(s.p99_us, ".0f"), _cell(s.errors, "d"), _cell(s.proxy_cpu_ms_per_1k, ".1f"),
         _cell(s.proxy_rss_mb, ".0f"), _cell(s.upstream_cpu_ms_per_1k, ".1f"),
         _cell(s.load_cpu_pct, ".0f"), _cell(s.host_busy_pct, ".0f")]
        for s in summaries
    )
    return _table(header, rows)


def comparison_table(comparisons: list[Comparison]) -> str:
    header = ["conc", "path", "+p50 us", "+p50 x haproxy", "rps/direct", "CPU ms/1k", "RSS MB"]
    rows = (
        [_cell(c.concurrency, "d"), c.path, _cell(c.added_p50_us, ".0f"),
         _cell(c.added_p50_x_haproxy, ".1f", "x"), _cell(c.rps_of_direct, ".2f"),
         _cell(c.cpu_ms_per_1k, ".1f"), _cell(c.rss_mb, ".0f")]
        for c in comparisons
    )
    return _table(header, rows)
