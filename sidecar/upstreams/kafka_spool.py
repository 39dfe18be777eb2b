"""A Kafka target's spool: messages the brokers could not acknowledge in time, kept
durably and delivered later through the target's own (idempotent) producer.

When a message is spooled rather than waited for (`spool_call`):
- the brokers are known unreachable (librdkafka's stats), or the breaker is open:
  at once, without handing it to librdkafka;
- its key has messages waiting in the spool: behind them, so the key's order holds;
- no acknowledgement came by a little before the caller's deadline (`SPOOL_MARGIN`):
  it is spooled *held*: librdkafka still has it and may deliver it, and its late
  report settles the spooled copy (delivered, or free for the drain to send).
The caller is answered OK (`spooled`) once the spool's commit is on disk. A call
reserves its messages' places in the spool's order when it begins (`reserve`), so one
spooled at its deadline still goes before messages with its key spooled meanwhile.

The drain (`drain`) sends waiting messages oldest first while the brokers are up and
nothing is held, a chunk at a time, and marks them delivered once acknowledged. A
crash between the brokers' acknowledgement and that mark sends those messages again
on the next start: duplicates are at most one chunk (`DRAIN_CHUNK`), never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sidecar.config import KafkaTarget
from sidecar.errors import (
    LimitExceededError,
    SidecarError,
    UpstreamError,
    UpstreamUnavailableError,
)
from sidecar.upstreams.kafka_config import delivery_error
from sidecar.upstreams.kafka_ledger import DELIVERED, FAILED, SPOOLED, Final, SpoolLedger
from sidecar.upstreams.kafka_messages import NOW, Outcomes, OutgoingMessage
from sidecar.upstreams.kafka_store import SpoolStore, StoredMessage, encode_headers

if TYPE_CHECKING:
    from sidecar.upstreams.kafka import KafkaUpstream
    from sidecar.upstreams.kafka_config import delivery_error
from sidecar.upstreams.kafka_ledger import SpoolState

log = logging.getLogger("sidecar.kafka")

# Seconds before the caller's deadline a message not yet acknowledged is spooled (at most
# a quarter of the time left): the spool's commit and the answer fit in it on a busy host.
SPOOL_MARGIN = 0.5
DRAIN_CHUNK = 256  # messages sent per drain step (and at most duplicated by a crash)
_DRAIN_IDLE = 1.0  # seconds between drain checks when nothing wakes it
_DRAIN_BACKOFF = 1.0  # seconds after a drain step the brokers did not take
_BARRIER_WAIT = 0.01  # seconds before looking again when calls still sending hold it up
_DRAIN_SLACK = 5.0  # seconds past producer.delivery_timeout a drain step waits at most

# Hands a spooled message to the producer; the callable gets its (partition, offset)
# once acknowledged, or our error.
Send = Callable[[StoredMessage, Callable[[Any], None]], None]


class SpoolBehind(SidecarError):
    """Not sent: the message queues in the spool behind others with its key."""


BEHIND = SpoolBehind("behind spooled messages with the same key")


def message_size(m: OutgoingMessage) -> int:
    """Bytes a message takes in the spool: key, value and headers."""
    size = len(m.key or b"") + len(m.value)
    for name, value in m.headers:
        size += len(name) + (len(value.encode()) if isinstance(value, str)
                             else len(value or b""))
    return size


class Spool:
    """One target's spool: the ledger in memory, the store on disk, the drain's state.

    Shared by the upstreams a reload builds for the same `spool.dir` (`holders`); the
    newest one still open (`owner`) drains it."""

    def __init__(self, target: KafkaTarget) -> None:
        assert target.spool is not None
        self.name = target.name
        self.config = target.spool
        self.ledger = SpoolLedger(target.spool.max_bytes, target.spool.retention)
        self.store = SpoolStore(target.spool.dir, f"targets.{target.name}.spool.dir")
        self.holders: list[object] = []
        self.wake = asyncio.Event()
        self.draining = asyncio.Lock()
        self.spooled_total = 0
        self.drained_total = 0
        self.failed_total = 0
        self._opened = False

    async def open(self) -> None:
        """Open the store and rebuild the ledger from it (a restart resumes the spool)."""
        if self._opened:
            return
        rows = await self.store.open()
        self._opened = True
        ledger = self.ledger
        for r in rows:
            if r.state == SPOOLED:
                ledger.add(r.request_id, r.key, r.size, r.spooled_at, seq=r.seq)
            else:
                ledger.next_seq = max(ledger.next_seq, r.seq + 1)
                ledger.remember(r.request_id, Final(r.seq, r.state, r.topic, r.partition,
                                                    r.offset, r.error, r.done_at or 0.0))
        if ledger.depth:
            log.info("kafka spool resumed", extra={"fields": {
                "target": self.name, "messages": ledger.depth, "bytes": ledger.bytes}})
            self.wake.set()

    @property
    def owner(self) -> object | None:
        return self.holders[-1] if self.holders else None

    def hold(self, holder: object) -> None:
        self.holders.append(holder)
        self.wake.set()

    async def let_go(self, holder: object) -> None:
        """`holder` is closed: the previous holder drains again; the last one closes the
        store (its files stay: the next start resumes the spool)."""
        self.holders.remove(holder)
        self.wake.set()
        if not self.holders:
            await self.store.close()

    def configure(self, target: KafkaTarget) -> None:
        """A reload kept the directory: the new size bound and retention apply."""
        assert target.spool is not None
        self.config = target.spool
        self.ledger.max_bytes = target.spool.max_bytes
        self.ledger.retention = target.spool.retention

    def status(self, request_id: str) -> SpoolState:
        return self.ledger.status(request_id, time.time())

    def stats(self) -> dict[str, Any]:
        ledger = self.ledger
        oldest = ledger.oldest()
        return {
            "dir": self.config.dir,
            "messages": ledger.depth,
            "bytes": ledger.bytes,
            "max_bytes": ledger.max_bytes,
            "oldest_age_s": 0.0 if oldest is None else round(max(time.time() - oldest, 0), 3),
            "held": ledger.held,
            "spooled": self.spooled_total,
            "drained": self.drained_total,
            "failed": self.failed_total,
        }

    async def put(self, topic: str, items: Sequence[tuple[int, OutgoingMessage, bool]],
                  outcomes: Outcomes, reason: str,
                  hold: Callable[[int, int], None] | None = None,
                  first: int | None = None) -> None:
        """Spool (index, message, held) of one call; each index ends in `outcomes` as
        spooled, or as refused (a full spool, a failed write). `hold(index, seq)` is
        told of every held one before the first wait, so no late report is missed.
        `first`: the call's reserved places (message `index` goes at `first + index`)."""
        ledger, now = self.ledger, time.time()
        rows: list[tuple[Any, ...]] = []
        seqs: list[tuple[int, int]] = []
        was_empty = ledger.depth == 0
        for index, m, held in items:
            size = message_size(m)
            if not ledger.has_room(size):
                outcomes.errors[index] = LimitExceededError(
                    f"target {self.name!r}: spool full ({ledger.bytes} of {ledger.max_bytes} "
                    "bytes held, spool.max_bytes); the message was not spooled")
                continue
            seq = ledger.add(m.request_id, m.key, size, now, held=held,
                             seq=None if first is None else first + index)
            if held and hold is not None:
                hold(index, seq)
            rows.append((seq, m.request_id, topic, m.key, m.value, encode_headers(m.headers),
                         m.partition, size, now))
            seqs.append((index, seq))
        if not rows:
            return
        if was_empty:
            log.warning("kafka spooling messages", extra={"fields": {
                "target": self.name, "reason": reason, "dir": self.config.dir}})
        try:
            await self.store.insert(rows)
        except Exception as e:  # the disk refused: these were not spooled
            for index, seq in seqs:
                ledger.fail(seq, topic, "not spooled", now)
                outcomes.errors[index] = LimitExceededError(
                    f"target {self.name!r}: spool write failed ({type(e).__name__}); "
                    "the message was not spooled")
            log.error("kafka spool write failed: %s", e, extra={"fields": {"target": self.name}})
            return
        self.spooled_total += len(seqs)
        for index, _ in seqs:
            outcomes.spool(index)
        self.wake.set()

    def settle_held(self, seq: int, topic: str, delivered: tuple[int, int] | None) -> None:
        """A held message's first send reported: delivered (partition, offset), else the
        drain sends the spooled copy."""
        if delivered is None:
            self.ledger.release(seq)
            self.wake.set()
            return
        if self.ledger.deliver(seq, topic, delivered[0], delivered[1], time.time()):
            self._finished([(DELIVERED, delivered[0], delivered[1], "", time.time(), seq)])

    def _finished(self, rows: list[tuple[Any, ...]]) -> asyncio.Future[None]:
        done = self.store.finish(rows)
        done.add_done_callback(self._written)
        if self.ledger.depth == 0:
            log.info("kafka spool drained", extra={"fields": {
                "target": self.name, "delivered": self.drained_total,
                "failed": self.failed_total}})
        return done

    def _written(self, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("kafka spool write failed: %s", done.exception(),
                      extra={"fields": {"target": self.name}})

    def ready_to_drain(self, brokers_up: bool) -> bool:
        ledger = self.ledger
        return brokers_up and ledger.depth > 0 and ledger.held == 0

    async def drain(self, owner: object, send: Send, brokers_up: Callable[[], bool],
                    delivery_timeout: float) -> None:
        """Deliver waiting messages while `owner` owns the spool; never returns otherwise."""
        loop = asyncio.get_running_loop()
        last_expiry = 0.0
        while True:
            self.wake.clear()
            if loop.time() - last_expiry >= min(self.ledger.retention / 10, 10.0):
                last_expiry = loop.time()
                gone = self.ledger.expire(time.time())
                if gone:
                    self.store.delete(gone).add_done_callback(self._written)
            if self.owner is owner and self.ready_to_drain(brokers_up()):
                async with self.draining:
                    took = await self._drain_step(send, delivery_timeout)
                if took:
                    continue
                # None: what waits is behind a call still sending; False: the brokers
                # took nothing.
                await asyncio.sleep(_BARRIER_WAIT if took is None else _DRAIN_BACKOFF)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), _DRAIN_IDLE)

    async def _drain_step(self, send: Send, delivery_timeout: float) -> bool | None:
        """Send up to `DRAIN_CHUNK` of the oldest waiting messages and record what the
        brokers acknowledged; False when they took none, None when none could be sent."""
        ledger = self.ledger
        stored = await self.store.waiting(0, DRAIN_CHUNK)
        # Not sent: rows a queued write already finished, held ones, and those at or past
        # the place of a call still sending (it may yet spool messages before them).
        barrier = ledger.barrier()
        batch = [m for m in stored if ledger.is_waiting(m.seq) and not ledger.is_held(m.seq)
                 and (barrier is None or m.seq < barrier)]
        if not batch:
            return None
        loop = asyncio.get_running_loop()
        reports: list[asyncio.Future[Any]] = []
        for m in batch:
            report: asyncio.Future[Any] = loop.create_future()
            reports.append(report)
            send(m, _settler(report))
        await asyncio.wait(reports, timeout=delivery_timeout + _DRAIN_SLACK)
        now = time.time()
        finished: list[tuple[Any, ...]] = []
        took = False
        for m, report in zip(batch, reports, strict=True):
            if not report.done():
                continue
            result = report.result()
            if isinstance(result, tuple):
                if ledger.deliver(m.seq, m.topic, result[0], result[1], now):
                    self.drained_total += 1
                    finished.append((DELIVERED, result[0], result[1], "", now, m.seq))
                took = True
            elif isinstance(result, SidecarError) and not isinstance(result, UpstreamError):
                # Refused for good (topic gone, too large, not allowed): sending again
                # would not help; Status says why.
                if ledger.fail(m.seq, m.topic, str(result), now):
                    self.failed_total += 1
                    finished.append((FAILED, -1, -1, str(result), now, m.seq))
                    log.warning("kafka spooled message failed: %s", result,
                                extra={"fields": {"target": self.name}})
                took = True
        if finished:
            await self._finished(finished)
        return took


async def spool_call(
    up: KafkaUpstream, spool: Spool, topic: str,
    messages: Iterable[OutgoingMessage | SidecarError], count: int, time_left: float,
    forced: str | None = None,
) -> Outcomes:
    """One call's messages on a target with a spool: sent, and spooled where they cannot
    be acknowledged in time (see the module's docstring); `forced` spools them all."""
    items = list(messages)
    reason = forced or up.spooling()
    if reason is not None:
        outcomes = Outcomes(count)
        to_spool: list[tuple[int, OutgoingMessage, bool]] = []
        for i, m in enumerate(items):
            if isinstance(m, SidecarError):
                outcomes.errors[i] = m
            else:
                to_spool.append((i, m, False))
        await spool.put(topic, to_spool, outcomes, reason)
        return outcomes
    ledger = spool.ledger
    first = ledger.reserve(count)
    try:
        return await _send_or_spool(up, spool, topic, items, count, time_left, first)
    finally:
        ledger.sent(first)


async def _send_or_spool(
    up: KafkaUpstream, spool: Spool, topic: str, items: list[OutgoingMessage | SidecarError],
    count: int, time_left: float, first: int,
) -> Outcomes:
    ledger = spool.ledger
    marked = [BEHIND if isinstance(m, OutgoingMessage) and ledger.behind(m.key) else m
              for m in items]
    pending = await up.send(topic, marked, count, time_left, SPOOL_MARGIN)
    if isinstance(pending, Outcomes):
        return pending
    outcomes = pending.results
    to_spool = []
    reason = "behind spooled messages with the same key"
    for i, m in enumerate(items):
        if isinstance(m, SidecarError):
            continue
        error = outcomes.errors.get(i)
        if error is BEHIND:
            to_spool.append((i, m, False))
        elif error is None and not outcomes.answered(i):
            to_spool.append((i, m, True))  # librdkafka still has it
            outcomes.unacked = True
            reason = "no broker acknowledgement before the caller's deadline"
        elif isinstance(error, UpstreamUnavailableError):
            to_spool.append((i, m, False))
            outcomes.unacked = True
            reason = str(error)
    if to_spool:
        late = pending.late = {}

        def hold(index: int, seq: int) -> None:
            late[index] = partial(spool.settle_held, seq, topic)

        await spool.put(topic, to_spool, outcomes, reason, hold, first)
    return up.answered(pending)


def send_stored(producer: Producer | None, name: str, m: StoredMessage,
                settle: Callable[[Any], None]) -> None:
    """Hand a spooled message to `producer` for the drain; `settle` gets the (partition,
    offset) acknowledged, or our error (a full queue or no producer: sent again later)."""
    if producer is None:
        settle(UpstreamUnavailableError(f"target {name!r}: shutting down"))
        return
    topic = m.topic

    def report(err: KafkaError | None, msg: Message) -> None:
        settle((msg.partition() or 0, msg.offset() or 0) if err is None
               else delivery_error(name, topic, err))

    try:
        producer.produce(topic, m.value, m.key, m.partition, report, None, NOW, m.headers)
    except BufferError:
        settle(UpstreamUnavailableError(f"target {name!r}: producer queue full"))
    except KafkaException as e:
        settle(delivery_error(name, topic, e.args[0]))


def _settler(report: asyncio.Future[Any]) -> Callable[[Any], None]:
    def settle(result: Any) -> None:
        if not report.done():
            report.set_result(result)
    return settle
