"""Protocol-free resilience: retry budget, backoff, breaker, limits, and the retry loop."""
