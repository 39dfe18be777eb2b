"""gRPC status codes, without importing grpcio.

The daemon speaks gRPC on its own engine, so its process never loads grpc core (about
19 MB of RSS, a poller thread and a C library that writes to stderr). Same names and
values as `grpc.StatusCode` (`code.value == (number, text)`), so code and messages read
the same on both sides; `sidecar.v1` clients keep using grpcio's own.
"""

from __future__ import annotations

import enum


@enum.unique
class StatusCode(enum.Enum):
    """The gRPC status codes (grpc/doc/statuscodes.md), as `grpc.StatusCode` has them."""

    OK = (0, "ok")
    CANCELLED = (1, "cancelled")
    UNKNOWN = (2, "unknown")
    INVALID_ARGUMENT = (3, "invalid argument")
    DEADLINE_EXCEEDED = (4, "deadline exceeded")
    NOT_FOUND = (5, "not found")
    ALREADY_EXISTS = (6, "already exists")
    PERMISSION_DENIED = (7, "permission denied")
    RESOURCE_EXHAUSTED = (8, "resource exhausted")
    FAILED_PRECONDITION = (9, "failed precondition")
    ABORTED = (10, "aborted")
    OUT_OF_RANGE = (11, "out of range")
    UNIMPLEMENTED = (12, "unimplemented")
    INTERNAL = (13, "internal")
    UNAVAILABLE = (14, "unavailable")
    DATA_LOSS = (15, "data loss")
    UNAUTHENTICATED = (16, "unauthenticated")

    def __init__(self, number: int, text: str) -> None:
        # `value` (and `name`) are Python-level properties of enum members, slow per call;
        # `number` is a plain attribute for the code paths every call takes.
        self.number = number

    # Members are singletons compared by identity: hash them so too, in C (Enum's own
    # __hash__ is Python code hashing the name, paid on every dict lookup keyed by one).
    __hash__ = object.__hash__


BY_NUMBER: dict[int, StatusCode] = {code.number: code for code in StatusCode}
NAMES = frozenset(code.name for code in StatusCode)


def from_number(number: int) -> StatusCode:
    """The code a `grpc-status` number stands for; UNKNOWN for one outside the table
    (as the gRPC spec says a client maps an unknown status)."""
    return BY_NUMBER.get(number, StatusCode.UNKNOWN)
