"""The engine's token bucket for peer-caused stream resets (the rapid-reset attack).

One implementation serves the engine and the listeners' `rate_limit`: it lives in
`sidecar/resilience/rate_limit.py`, sans-I/O like every policy.
"""

from __future__ import annotations

from sidecar.resilience.rate_limit import TokenBucket

__all__ = ["TokenBucket"]
