"""What a Kafka publish is made of and comes to, without librdkafka: the Publisher service
uses these, so confluent-kafka is loaded with the first kafka target, not by every daemon."""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from sidecar.errors import SidecarError, UpstreamError
from sidecar.resilience.policy import Attempt


@dataclass(slots=True, init=False)
class Delivered:
    """A message's place in its topic. (Not a NamedTuple, and its `__init__` written out:
    compiled, both of those are Python code; one is made per Publish.)"""

    partition: int
    offset: int

    def __init__(self, partition: int, offset: int) -> None:
        self.partition = partition
        self.offset = offset


class OutgoingMessage:
    """A message as it goes to librdkafka. A class, not a NamedTuple: compiled, it is
    made by a C call, where a NamedTuple's `__new__` stays Python code (a batch makes one
    per message: 4-5% of a PublishBatch's CPU with the call around it, perf)."""

    __slots__ = ("headers", "key", "partition", "request_id", "value")

    def __init__(self, key: bytes | None, value: bytes,
                 headers: list[tuple[str, str | bytes | None]], partition: int,
                 request_id: str = "") -> None:
        self.key = key
        self.value = value
        self.headers = headers
        self.partition = partition  # -1: the partitioner chooses
        self.request_id = request_id  # its request-id header's value (what Status asks)


Outcome = Delivered | SidecarError

# `Producer.produce` is called positionally: with keywords confluent-kafka builds a dict per
# message (2.4 -> 1.9 us per produce with four headers, measured). This is the order of its
# C signature, which its docstring does not give whole; tests/test_confluent_api.py pins it.
PRODUCE_ARGUMENTS = ("topic", "value", "key", "partition", "callback", "on_delivery",
                     "timestamp", "headers")  # callback and on_delivery: the same, either
NOW = 0  # the timestamp argument that means "stamp it now" (librdkafka's default)
_UNSET = -(2**63)  # no offset yet (librdkafka's own "no offset" values are small negatives)
_NO_PARTITIONS = array("i", [0])
_NO_OFFSETS = array("q", [_UNSET])


class Outcomes:
    """One call's outcomes, one per message in order, without an object per delivered
    message: partitions and offsets in arrays, failures by index; `delivered` and
    `delivered_bytes` (of values) count the acknowledged ones. `spooled` holds the
    indexes kept in the target's spool (answered OK, delivered later); `unacked` says
    some were spooled for want of an acknowledgement (a fault, for the breaker)."""

    __slots__ = ("delivered", "delivered_bytes", "errors", "offsets", "partitions", "spooled",
                 "unacked")

    def __init__(self, n: int) -> None:
        self.partitions = _NO_PARTITIONS * n  # repeating a one-item array: 0.18 us against
        self.offsets = _NO_OFFSETS * n  # 0.5 for building both from bytes and lists (n = 1)
        self.errors: dict[int, SidecarError] = {}
        self.delivered = self.delivered_bytes = 0
        self.spooled: set[int] = set()
        self.unacked = False

    @classmethod
    def failed(cls, n: int, error: SidecarError) -> Outcomes:
        outcomes = cls(n)
        outcomes.errors = dict.fromkeys(range(n), error)
        return outcomes

    def deliver(self, index: int, partition: int, offset: int, value_bytes: int) -> None:
        self.partitions[index] = partition
        self.offsets[index] = offset
        self.delivered += 1
        self.delivered_bytes += value_bytes

    def spool(self, index: int) -> None:
        """Message `index` is in the spool: no error, no offset (-1) yet."""
        self.errors.pop(index, None)
        self.partitions[index] = -1
        self.offsets[index] = -1
        self.spooled.add(index)

    def answered(self, index: int) -> bool:
        """Message `index` has an outcome (acknowledged, refused or spooled)."""
        return self.offsets[index] != _UNSET or index in self.errors

    def fill(self, error: SidecarError) -> None:
        """`error` for every message that has no outcome yet."""
        errors, offsets = self.errors, self.offsets
        for i, offset in enumerate(offsets):
            if offset == _UNSET and i not in errors:
                errors[i] = error

    def fault(self) -> UpstreamError | None:
        """A broker failure among the outcomes (the first recorded), if any."""
        return next((e for e in self.errors.values() if isinstance(e, UpstreamError)), None)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Outcome:
        error = self.errors.get(index)
        if error is not None:
            return error
        return Delivered(self.partitions[index], self.offsets[index])


def classify(outcomes: Outcomes) -> Attempt:
    """One call's outcomes for the resilience layer: never retried (librdkafka already
    retried; a second send could duplicate), broker failures count for the breaker."""
    ok = outcomes.delivered + len(outcomes.spooled) == len(outcomes)
    fault = outcomes.unacked or outcomes.fault() is not None
    return Attempt(ok=ok, fault=fault, retryable=False)
