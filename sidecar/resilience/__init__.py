"""Protocol-free resilience: retry budget, backoff, breaker, limits, rate limits, and the
retry loop."""
