"""What a listener lets in before a call is routed: its peers, its user, its rate limit.

One `Gate` per listener (built with the Runtime, its rate-limit buckets kept across a
reload that leaves `rate_limit` as it was). `admit(ctx)` is the one check every kind of
call makes (the proxy and the sidecar.v1 services alike), in this order: a peer
`identity.peers` does not map, on a `unknown_peer: reject` listener, is PERMISSION_DENIED;
a missing user id where one is required is UNAUTHENTICATED; a call over `rate_limit` is
RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`. Which targets a listener may reach is
the Router's part (`routing.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.config import Listener
from sidecar.context import CallContext, require_identity
from sidecar.errors import PermissionDeniedError, RateLimitedError
from sidecar.resilience.rate_limit import RateLimiter, pushback_ms


class Gate:
    """One listener's admission: peer policy, required user id, rate limit."""

    __slots__ = ("_clock", "_limiter", "_name", "_reject_unknown", "_require_user",
                 "listener")

    def __init__(self, listener: Listener, previous: Gate | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listener = listener
        self._name = listener.name
        identity = listener.identity
        self._reject_unknown = identity.unknown_peer == "reject"
        self._require_user = identity.require_user
        self._clock = clock
        limit = listener.rate_limit
        if limit is None:
            self._limiter: RateLimiter | None = None
        elif previous is not None and previous.listener.rate_limit == limit:
            self._limiter = previous._limiter  # the buckets carry on, as the limit did
        else:
            self._limiter = RateLimiter(limit.rate, limit.burst, limit.per == "caller",
                                        clock())

    @property
    def limiter(self) -> RateLimiter | None:
        return self._limiter

    def admit(self, ctx: CallContext) -> None:
        """Raise why the call may not go on; return (a token spent) when it may."""
        if self._reject_unknown and ctx.peer_user is None:
            raise PermissionDeniedError(self._unknown_peer(ctx))
        if self._require_user:
            require_identity(ctx, self.listener.identity, self._name)
        limiter = self._limiter
        if limiter is not None:
            wait = limiter.acquire(ctx.caller_key, self._clock())
            if wait:
                raise self._over(wait)

    def _unknown_peer(self, ctx: CallContext) -> str:
        peer = ctx.peer
        if peer is None:
            return (f"listener {self._name!r}: the caller's uid is unknown (no SO_PEERCRED) "
                    "and identity.unknown_peer is reject")
        return (f"listener {self._name!r}: peer uid {peer.uid} (gid {peer.gid}) matches no "
                "identity.peers entry and identity.unknown_peer is reject")

    def _over(self, wait: float) -> RateLimitedError:
        limit = self.listener.rate_limit
        assert limit is not None
        ms = pushback_ms(wait)
        per = ", per caller" if limit.per == "caller" else ""
        return RateLimitedError(
            f"listener {self._name!r}: over its rate_limit ({limit.rate:g}/s, burst "
            f"{limit.burst}{per}); a call may go again in {ms} ms", ms)
