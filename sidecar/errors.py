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
│   └── RateLimitedError          over a listener's rate_limit (with grpc-retry-pushback-ms)
└── UpstreamError                 the daemon could not get an answer from a target
    ├── UpstreamUnavailableError  UNAVAILABLE: unreachable, circuit open
    │   └── CircuitOpenError      the breaker refused the call (not an upstream fault itself)
    └── UpstreamTimeoutError      DEADLINE_EXCEEDED

Messages name the target and the reason and never carry a secret: they are
shown to callers as they are.
"""

from __future__ import annotations

from sidecar.status import StatusCode


class SidecarError(Exception):
    """Root of the daemon's errors; `grpc_status` is what the caller gets."""

    grpc_status: StatusCode = StatusCode.INTERNAL
    # Trailing metadata the caller gets with the status (names lower case, text values).
    trailers: tuple[tuple[str, str], ...] = ()


class ConfigError(SidecarError):
    """A config with problems; `problems` holds one `key.path: reason` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class NoRouteError(SidecarError):
    grpc_status = StatusCode.UNIMPLEMENTED


class UnknownTargetError(SidecarError):
    grpc_status = StatusCode.NOT_FOUND


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


class RateLimitedError(LimitExceededError):
    """Over a listener's rate limit: the caller is told when a token is next free."""

    def __init__(self, message: str, pushback_ms: int) -> None:
        super().__init__(message)
        self.pushback_ms = pushback_ms
        self.trailers = (("grpc-retry-pushback-ms", str(pushback_ms)),)


class UpstreamError(SidecarError):
    grpc_status = StatusCode.UNAVAILABLE


class UpstreamUnavailableError(UpstreamError):
    grpc_status = StatusCode.UNAVAILABLE


class CircuitOpenError(UpstreamUnavailableError):
    """Failing fast while the breaker is open; the fault that opened it stays `last_error`."""


class UpstreamTimeoutError(UpstreamError):
    grpc_status = StatusCode.DEADLINE_EXCEEDED
