"""The daemon's errors, one tree, each with the gRPC status a caller sees.

SidecarError                      any failure the daemon reports to a caller
├── ConfigError                   a config that cannot be used (carries every problem)
├── NoRouteError                  UNIMPLEMENTED: no target for a method
├── UnknownTargetError            NOT_FOUND: a target name that is not configured
├── InvalidRequestError           INVALID_ARGUMENT: a request the daemon cannot act on
│   └── PermissionDeniedError     PERMISSION_DENIED: e.g. a topic the target does not allow
├── UnauthenticatedError          UNAUTHENTICATED: a listener requires a user id
├── ListenerError                 a socket that cannot be served (in use, not a socket)
├── LimitExceededError            RESOURCE_EXHAUSTED: over a concurrency or size limit
│   ├── OverloadedError           over a target's limits.max_in_flight (shed at once)
│   └── RateLimitedError          over a listener's rate_limit (with grpc-retry-pushback-ms)
└── UpstreamError                 the daemon could not get an answer from a target
    ├── UpstreamUnavailableError  UNAVAILABLE: unreachable, circuit open
    │   ├── UpstreamConnectError  no connection could be made (never sent)
    │   ├── UpstreamLostError     the connection went away or reset the call mid-way
    │   └── CircuitOpenError      the breaker refused the call (not an upstream fault itself)
    └── UpstreamTimeoutError      DEADLINE_EXCEEDED

Messages name the target and the reason and never carry a secret: they are
shown to callers as they are. `flag` is the Envoy response flag the access log and the
call's span carry for the error (docs/observability.md lists them).
"""

from __future__ import annotations

from sidecar.status import StatusCode

SHOWN = 80  # characters of a caller's text (a name, a topic) an error message repeats


def shown(text: str, limit: int = SHOWN) -> str:
    """`text` as an error message quotes what a caller sent: repr'd, clipped to `limit`
    characters (a 100 KB name must not make a status larger than the caller takes)."""
    return repr(text) if len(text) <= limit else repr(text[:limit - 3]) + "..."


class SidecarError(Exception):
    """Root of the daemon's errors; `grpc_status` is what the caller gets."""

    grpc_status: StatusCode = StatusCode.INTERNAL
    flag: str = ""  # Envoy's response flag for it (UF, UO, RL, ...); "" when none fits
    # Trailing metadata the caller gets with the status (names lower case, text values).
    trailers: tuple[tuple[str, str], ...] = ()


class ConfigError(SidecarError):
    """A config with problems; `problems` holds one `key.path: reason` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class NoRouteError(SidecarError):
    grpc_status = StatusCode.UNIMPLEMENTED
    flag = "NR"


class UnknownTargetError(SidecarError):
    grpc_status = StatusCode.NOT_FOUND
    flag = "NR"


class InvalidRequestError(SidecarError):
    grpc_status = StatusCode.INVALID_ARGUMENT


class PermissionDeniedError(InvalidRequestError):
    grpc_status = StatusCode.PERMISSION_DENIED


class UnauthenticatedError(SidecarError):
    grpc_status = StatusCode.UNAUTHENTICATED


class ListenerError(SidecarError):
    grpc_status = StatusCode.UNAVAILABLE


class LimitExceededError(SidecarError):
    grpc_status = StatusCode.RESOURCE_EXHAUSTED


class OverloadedError(LimitExceededError):
    """Shed at once: the target has `limits.max_in_flight` calls in flight."""

    flag = "UO"


class RateLimitedError(LimitExceededError):
    """Over a listener's rate limit: the caller is told when a token is next free."""

    flag = "RL"

    def __init__(self, message: str, pushback_ms: int) -> None:
        super().__init__(message)
        self.pushback_ms = pushback_ms
        self.trailers = (("grpc-retry-pushback-ms", str(pushback_ms)),)


class UpstreamError(SidecarError):
    grpc_status = StatusCode.UNAVAILABLE


class UpstreamUnavailableError(UpstreamError):
    grpc_status = StatusCode.UNAVAILABLE


class UpstreamConnectError(UpstreamUnavailableError):
    """No connection to the target could be made: nothing was sent."""

    flag = "UF"


class UpstreamLostError(UpstreamUnavailableError):
    """The upstream's connection closed, or it reset the call, before the answer ended."""

    flag = "UC"


class CircuitOpenError(UpstreamUnavailableError):
    """Failing fast while the breaker is open; the fault that opened it stays `last_error`."""

    flag = "UO"


class UpstreamTimeoutError(UpstreamError):
    grpc_status = StatusCode.DEADLINE_EXCEEDED
    flag = "UT"
