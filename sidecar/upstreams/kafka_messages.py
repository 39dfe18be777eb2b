"""What a Kafka publish is made of and comes to, without librdkafka: the Publisher service
uses these, so confluent-kafka is loaded with the first kafka target, not by every daemon."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sidecar.errors import SidecarError, UpstreamError
from sidecar.resilience.policy import Attempt


class Delivered(NamedTuple):
    partition: int
    offset: int


class OutgoingMessage(NamedTuple):
    key: bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    partition: int  # -1: the partitioner chooses


Outcome = Delivered | SidecarError


def classify(outcomes: Sequence[Outcome]) -> Attempt:
    """One call's outcomes for the resilience layer: never retried (librdkafka already
    retried; a second send could duplicate), broker failures count for the breaker."""
    fault = any(isinstance(o, UpstreamError) for o in outcomes)
    ok = all(isinstance(o, Delivered) for o in outcomes)
    return Attempt(ok=ok, fault=fault, retryable=False)
