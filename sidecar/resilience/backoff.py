"""Exponential backoff with full jitter, and the upstream's own pushback."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime


def full_jitter(retry: int, base: float, cap: float, rand: random.Random | None = None) -> float:
    """Seconds to wait before retry number `retry` (1 for the first retry)."""
    ceiling = min(cap, base * (2 ** (retry - 1)))
    return (rand or random).uniform(0.0, ceiling)


def grpc_pushback(value: str | None) -> float | None:
    """`grpc-retry-pushback-ms` in seconds; -1.0 means the upstream asks for no retry."""
    if value is None:
        return None
    try:
        ms = int(value)
    except ValueError:
        return -1.0  # malformed pushback means "do not retry" (gRPC A6)
    return -1.0 if ms < 0 else ms / 1000


def retry_after(value: str | None, now_epoch: float) -> float | None:
    """HTTP `Retry-After` (seconds or an HTTP date) in seconds from now."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_epoch)
