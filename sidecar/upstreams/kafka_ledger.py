"""What a Kafka spool holds, as bookkeeping without I/O: the messages waiting (in spool
order, with their keys, sizes and ages), the final states kept for `Status` until
`retention`, and the decisions drawn from them: room for a message, whether a key must
queue behind spooled messages, which final states have expired.

Times are wall-clock seconds (`time.time()`), passed in: a spool outlives the process,
so its ages and retention are measured the same way before and after a restart.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

SPOOLED, DELIVERED, FAILED = 1, 2, 3  # PublishStatusResponse.State's values


class Waiting(NamedTuple):
    """A spooled message as the ledger sees it (its payload stays in the store)."""

    request_id: str
    key: bytes | None
    size: int
    spooled_at: float


class Final(NamedTuple):
    """A spooled message's last state: delivered (partition, offset) or failed (error)."""

    seq: int
    state: int
    topic: str
    partition: int
    offset: int
    error: str
    done_at: float


class SpoolState(NamedTuple):
    """`Status` of one request id."""

    state: int
    topic: str = ""
    partition: int = -1
    offset: int = -1
    error: str = ""


UNKNOWN = SpoolState(0)


class SpoolLedger:
    """The spool's contents and decisions; the store (`kafka_store.py`) mirrors it on disk.

    A message is `waiting` from `add` until `deliver` or `fail`; a waiting one may be
    `held` meanwhile: its first send is still in librdkafka's hands (answered from the
    spool before its acknowledgement came), so the drain must not send it (nor anything
    behind it) again until that send's report settles it (`release`, `deliver`, `fail`).
    """

    __slots__ = ("_by_id", "_calls", "_done", "_expiry", "_held", "_keys", "_waiting", "bytes",
                 "full", "max_bytes", "next_seq", "retention")

    def __init__(self, max_bytes: int, retention: float) -> None:
        self.max_bytes = max_bytes
        self.retention = retention
        self.bytes = 0
        self.full = False  # it refused a message, and none has left since
        self.next_seq = 1
        self._waiting: dict[int, Waiting] = {}  # by seq, in the order they were spooled
        self._calls: dict[int, int] = {}  # first seq reserved -> messages, of calls sending
        self._by_id: dict[str, int] = {}  # request id -> seq of a waiting message
        self._keys: dict[bytes, int] = {}  # key -> waiting messages with it
        self._held: set[int] = set()
        self._done: dict[str, Final] = {}
        self._expiry: deque[tuple[float, str]] = deque()  # (done_at, request id), in order

    @property
    def depth(self) -> int:
        return len(self._waiting)

    @property
    def held(self) -> int:
        return len(self._held)

    def oldest(self) -> float | None:
        """When the oldest waiting message was spooled, if any waits."""
        first = next(iter(self._waiting.values()), None)
        return None if first is None else first.spooled_at

    def has_room(self, size: int) -> bool:
        """`size` more bytes fit; a refusal marks the spool `full` until one leaves."""
        if self.bytes + size <= self.max_bytes:
            return True
        self.full = True
        return False

    def takes_messages(self) -> bool:
        """Not full (for health: a spool that refuses messages no longer absorbs an outage)."""
        return not self.full and self.bytes < self.max_bytes

    def behind(self, key: bytes | None) -> bool:
        """A message with `key` must go through the spool: earlier ones with it wait there."""
        return key is not None and key in self._keys

    def add(self, request_id: str, key: bytes | None, size: int, spooled_at: float,
            *, held: bool = False, seq: int | None = None) -> int:
        """A message enters the spool (or is found there at start, with its `seq`)."""
        if seq is None:
            seq = self.next_seq
        self.next_seq = max(self.next_seq, seq + 1)
        self._waiting[seq] = Waiting(request_id, key, size, spooled_at)
        self._by_id[request_id] = seq
        if key is not None:
            self._keys[key] = self._keys.get(key, 0) + 1
        self.bytes += size
        if held:
            self._held.add(seq)
        return seq

    def reserve(self, count: int) -> int:
        """Spool places for a call's messages before they are sent (the first of `count`),
        so one spooled later (not acknowledged in time) still goes before messages with
        its key spooled meanwhile; `sent` when the call is over."""
        first = self.next_seq
        self.next_seq += count
        self._calls[first] = count
        return first

    def sent(self, first: int) -> None:
        self._calls.pop(first, None)

    def barrier(self) -> int | None:
        """The drain sends only messages before this place: a call still sending may
        yet spool messages there."""
        return min(self._calls) if self._calls else None

    def is_waiting(self, seq: int) -> bool:
        return seq in self._waiting

    def is_held(self, seq: int) -> bool:
        return seq in self._held

    def release(self, seq: int) -> None:
        """A held message's first send failed: the drain sends it."""
        self._held.discard(seq)

    def deliver(self, seq: int, topic: str, partition: int, offset: int, now: float) -> bool:
        """Acknowledged by the brokers; False when it was not waiting (already final)."""
        return self._finish(seq, Final(seq, DELIVERED, topic, partition, offset, "", now))

    def fail(self, seq: int, topic: str, error: str, now: float) -> bool:
        """Refused by the brokers for good (it will not be sent again)."""
        return self._finish(seq, Final(seq, FAILED, topic, -1, -1, error, now))

    def _finish(self, seq: int, final: Final) -> bool:
        entry = self._waiting.pop(seq, None)
        if entry is None:
            return False
        self._held.discard(seq)
        self.bytes -= entry.size
        self.full = False
        self._by_id.pop(entry.request_id, None)
        key = entry.key
        if key is not None:
            left = self._keys[key] - 1
            if left:
                self._keys[key] = left
            else:
                del self._keys[key]
        self.remember(entry.request_id, final)
        return True

    def remember(self, request_id: str, final: Final) -> None:
        """Keep a final state for `Status` until `retention` after `final.done_at`
        (called in `done_at` order, also when loading the store)."""
        self._done[request_id] = final
        self._expiry.append((final.done_at, request_id))

    def status(self, request_id: str, now: float) -> SpoolState:
        seq = self._by_id.get(request_id)
        if seq is not None:
            return SpoolState(SPOOLED)
        final = self._done.get(request_id)
        if final is None or now - final.done_at >= self.retention:
            return UNKNOWN
        return SpoolState(final.state, final.topic, final.partition, final.offset,
                          final.error)

    def expire(self, now: float) -> list[int]:
        """Forget final states older than `retention`: the seqs to delete from the store."""
        gone: list[int] = []
        expiry, done, limit = self._expiry, self._done, now - self.retention
        while expiry and expiry[0][0] <= limit:
            done_at, request_id = expiry.popleft()
            final = done.get(request_id)
            if final is not None and final.done_at == done_at:
                del done[request_id]
                gone.append(final.seq)
        return gone
