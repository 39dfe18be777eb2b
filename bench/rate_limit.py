"""Microbenchmark: the rate-limit check a listener makes per call (`Gate.admit`).

Times, with timeit, what the hot path pays for a `rate_limit`: the clock read, the bucket
lookup (per caller: a dict of a few thousand callers) and the token arithmetic, for a
call that is admitted. Prints nanoseconds per check, the best of several rounds, for a
per-listener limit, a per-caller limit, and the bare `RateLimiter.acquire`.
"""

from __future__ import annotations

import argparse
import time
import timeit

from sidecar.admission import Gate
from sidecar.config import Identity, Listener, RateLimit
from sidecar.context import build_context
from sidecar.engine.peer import Peer
from sidecar.resilience.rate_limit import RateLimiter

CALLERS = 5000  # distinct uids with a bucket each, so the lookup is not a toy dict's
HUGE = 1e12  # tokens a second: every timed call is admitted (the common case)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=200_000, help="checks per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    identity = Identity()
    ctx = build_context([], identity, Peer(1000, 1000, 42))
    per_listener = Gate(Listener("app", "/tmp/app.sock",
                                 rate_limit=RateLimit(HUGE, 1_000_000, "listener")))
    per_caller = Gate(Listener("app", "/tmp/app.sock",
                               rate_limit=RateLimit(HUGE, 1_000_000, "caller")))
    for uid in range(CALLERS):
        per_caller.admit(build_context([], identity, Peer(uid, uid, uid)))
    bare = RateLimiter(HUGE, 1_000_000, True, time.monotonic())
    for uid in range(CALLERS):
        bare.acquire(uid, time.monotonic())
    now = time.monotonic()

    cases = {
        "Gate.admit, per: listener": lambda: per_listener.admit(ctx),
        "Gate.admit, per: caller": lambda: per_caller.admit(ctx),
        "RateLimiter.acquire (per caller, no clock read)": lambda: bare.acquire(1000, now),
        "empty lambda (the timing loop itself)": lambda: None,
    }
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.rounds))
        print(f"{name:50s} {best / args.number * 1e9:7.0f} ns")


if __name__ == "__main__":
    main()
