"""Upstream Kafka targets: one librdkafka producer per target, shared by every caller.

librdkafka batches, retries within `producer.delivery_timeout` and (by
default) deduplicates with an idempotent producer, so the daemon never
re-publishes. Everything runs on the event loop, none of it blocking:
`produce()` only enqueues, and delivery reports, stats and logs are served with
`poll(0)` as soon as librdkafka signals them on a pipe the loop watches
(kafka_wakeup.py); where that signal is not to be had, a poller task serves them
every millisecond while messages are out. A call
whose messages do not fit in the producer's queue waits for those reports to
free room, up to its deadline. Delivery errors become our errors naming the
target here; nothing above this module sees a librdkafka type. librdkafka's own log lines and error
strings quote configured values (a broker address at debug level): every one
passes through the runtime's `Redactor` before it is logged or shown.
A target with a `spool` keeps what cannot be acknowledged in time on disk and
delivers it later through this producer (kafka_spool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sidecar.config import KafkaTarget
from sidecar.errors import (
    ConfigError,
    InvalidRequestError,
    LimitExceededError,
    PermissionDeniedError,
    SidecarError,
    UpstreamConnectError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    shown,
)
from sidecar.telemetry.redaction import NO_SECRETS, Redactor
from sidecar.upstreams.kafka_config import (
    ClientLog,
    delivery_error,
    producer_config,
    producer_problems,
    redact_config_values,
)
from sidecar.upstreams.kafka_ledger import UNKNOWN, SpoolState
from sidecar.upstreams.kafka_messages import (
    NOW,
    Delivered,
    Outcome,
    Outcomes,
    OutgoingMessage,
    classify,
)
from sidecar.upstreams.kafka_spool import Spool, send_stored, spool_call
from sidecar.upstreams.kafka_store import StoredMessage
from sidecar.upstreams.kafka_wakeup import Wakeup, wakeup_for

__all__ = ["Delivered", "KafkaUpstream", "Outcome", "Outcomes", "OutgoingMessage", "classify",
           "producer_config", "producer_problems"]

log = logging.getLogger("sidecar.kafka")

_BUSY_POLL = 0.001  # seconds between polls while messages await delivery reports
_IDLE_POLL = 0.1  # ... and while none do (stats, logs, errors)
_ROOM_WAIT = 0.05  # longest wait for queue room before trying produce() again anyway
_PRODUCE_SLICE = 1000  # messages a call enqueues before letting the loop run
# Calls a burst of delivery reports wakes per loop turn (`_Wakes`). At 64 Publish calls
# in flight (h2load, calls/s; all at once: Python 7,100-7,900): Python 1: 9,000-9,300,
# 2: 9,600-9,900, 4: 9,700-9,800, 16: 8,600; compiled 1: 10,400-10,800, 2: 10,300-10,400,
# 4: 10,100, 16: 9,300-9,700. Doubling the slice each turn of a burst (2, 4, ... 64) cost
# 15-25% less CPU but 0.77 of direct-c against 0.84-0.88 for a fixed 2. Fixed slices
# alternating in one bench run (compiled, 7 rounds each; bench/README.md): 2 per turn
# 0.88 of direct-c at 93 ms CPU per 1000 calls (up to 111, over the aim of 100, in the
# host's slow spells), 3: 0.87 at 81, 4: 0.88 at 71, 6 and 8: 0.82 at 56-66. Every turn
# costs a write and a wake-up of the caller; from 6 on, calls miss their batch.
_WAKE_SLICE = 4
# ... and in the first turn of a burst: one, so the first answer goes out before three more
# are built, and the first next call, whose produce() starts `linger.ms` for the batch, comes
# sooner. Fourteen alternating runs each: 0.895 of direct-c (0.86-0.92) against 0.875
# (0.82-0.91) for four, one ahead in 9 of the 14 pairs, at the same CPU (about 72 against
# 75 ms per 1000 calls); two in the first turn: 0.90 in 4 runs.
_FIRST_SLICE = 1
# Producer-epoch bumps with no delivery in between: the brokers keep refusing our
# producer id (a broker that lost its state), whatever the rate of bumps.
_STUCK_EPOCH_BUMPS = 5
# Seconds before the caller's deadline we answer ourselves (at most a fifth of the time
# left): enough for the answer to reach the caller on a busy machine.
_REPLY_MARGIN = 0.2
_CONNECTED = frozenset({"UP", "UPDATE"})
# What Kafka takes as a topic name (its Topic.validate): the brokers refuse any other, and
# librdkafka cannot even pass one with a NUL.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_TOPICS_REMEMBERED = 1024  # topics a target remembers it checked (then each is checked anew)
_DOWN_REASONS = {
    KafkaError._ALL_BROKERS_DOWN: "all brokers down",
    KafkaError._RESOLVE: "broker name not resolved",
    KafkaError._AUTHENTICATION: "authentication failed",
    KafkaError._SSL: "TLS handshake failed",
}


def _time_up(done: asyncio.Future[None]) -> None:
    """The call's answer is due: it takes what was acknowledged by now."""
    if not done.done():
        done.set_result(None)


class _Wakes:
    """Wakes the calls whose messages were all reported, `_WAKE_SLICE` per loop turn
    (`_FIRST_SLICE` in a burst's first turn).

    One poll(0) serves a whole produce request's reports at once: with 64 calls in
    flight, all 64 were acknowledged together, and waking them together ran all 64
    answers before the loop read again. The callers' next calls, sent as soon as the
    first answers reach them, then waited for the last answer before being produced,
    and `linger.ms` only started after that. Woken a few per turn, the loop reads (and
    produces) between slices, so the next batch lingers while the rest are answered.
    """

    __slots__ = ("_scheduled", "_waiting", "_woken", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._woken = 0  # calls woken this turn (a burst's first turn starts part-used)
        self._scheduled = False

    def wake(self, done: asyncio.Future[None]) -> None:
        """Settle `done` (not settled yet) now if this turn has room, else in a later one.
        The first report since the last turn may begin a burst: its turn wakes fewer."""
        if not self._scheduled:  # no turn pending, so none woke a call since the last
            self._woken = _WAKE_SLICE - _FIRST_SLICE
        if self._woken < _WAKE_SLICE and not self._waiting:
            self._woken += 1
            done.set_result(None)
        else:
            self._waiting.append(done)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        self._woken = 0
        waiting = self._waiting
        while waiting and self._woken < _WAKE_SLICE:
            done = waiting.popleft()
            if not done.done():  # the call's deadline timer or a cancellation came first
                self._woken += 1
                done.set_result(None)
        if waiting or self._woken:  # the next turn counts afresh (and wakes the rest)
            self._scheduled = True
            self.loop.call_soon(self._turn)


class _Pending:
    """One call's outcomes, one per message, complete once every message has one;
    reports after the call answered (`done` cancelled) are not recorded, except those
    of messages spooled while librdkafka still had them (`late`)."""

    __slots__ = ("done", "late", "left", "results", "target", "topic", "wakes")

    def __init__(self, wakes: _Wakes, target: str, topic: str, n: int) -> None:
        self.wakes = wakes
        self.target = target
        self.topic = topic
        self.results = Outcomes(n)
        self.left = n
        self.done: asyncio.Future[None] = wakes.loop.create_future()
        self.late: dict[int, Callable[[tuple[int, int] | None], None]] | None = None

    def report(self, index: int, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery callback."""
        if self.done.done():
            late = self.late
            if late is not None and index in late:
                late.pop(index)(None if err is not None else
                                (msg.partition() or 0, msg.offset() or 0))
            return
        if err is None:
            self.results.deliver(index, msg.partition() or 0, msg.offset() or 0, len(msg))
            self._count()
        else:
            self.settle(index, delivery_error(self.target, self.topic, err))

    def settle(self, index: int, error: SidecarError) -> None:
        if self.done.done():
            return
        self.results.errors[index] = error
        self._count()

    def _count(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.wakes.wake(self.done)


class KafkaUpstream:
    """The producer of one kafka target, its poller, and broker reachability."""

    kind = "kafka"

    def __init__(self, target: KafkaTarget, redact: Redactor = NO_SECRETS) -> None:
        self.target = target
        self.spool = None if target.spool is None else Spool(target)
        self._drain: asyncio.Task[None] | None = None
        self._redact = redact
        self._config = producer_config(target)
        self._producer: Producer | None = None
        self._retired: list[Producer] = []  # replaced producers, polled until empty
        self._wakeups: dict[int, Wakeup] = {}  # by id() of the producer whose queue signals
        self._generation = 0
        self._epochs = -1
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self._room: asyncio.Future[None] | None = None  # resolved by the poller's reports
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakes: _Wakes | None = None
        self._brokers_up = True  # until librdkafka's first stats say otherwise
        self._down_reason: str | None = None
        self._topics_ok: set[str] = set()  # topics check_topic passed (a target's own)
        self.replaced = 0

    def share_spool(self, spool: Spool) -> None:
        """Take over the spool of the upstream a reload replaces (same `spool.dir`)."""
        spool.configure(self.target)
        self.spool = spool

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakes = _Wakes(self._loop)
        spool = self.spool
        if spool is not None:
            await spool.open()  # a ConfigError naming spool.dir if it cannot be kept
            spool.hold(self)
        try:
            self._producer = self._new_producer()
        except BaseException:
            if spool is not None:
                await spool.let_go(self)  # the store closes (and unlocks) if no one else holds it
            raise
        self._poller = asyncio.create_task(self._poll())
        if spool is not None:
            self._drain = asyncio.create_task(spool.drain(
                self, self._send_stored, lambda: self._brokers_up,
                self.target.producer.delivery_timeout))

    async def close(self, timeout: float) -> None:
        """Flush what callers handed over, for up to `timeout` seconds, then release."""
        if self._poller is None:
            return
        self._closing = True
        if self._drain is not None:
            await self._stop_drain(timeout)
        self._poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poller
        self._poller = None
        deadline = time.monotonic() + timeout
        for producer in [p for p in (self._producer, *self._retired) if p is not None]:
            # A fatal error surfaces from poll(); what is left is then purged below.
            with contextlib.suppress(KafkaException):
                while len(producer) and time.monotonic() < deadline:
                    producer.poll(0)
                    await asyncio.sleep(_BUSY_POLL)
            if len(producer):
                log.warning("kafka messages not delivered before drain_timeout", extra={
                    "fields": {"target": self.target.name, "messages": len(producer)}})
                producer.purge(blocking=False)
                with contextlib.suppress(KafkaException):
                    producer.poll(0)
            self._unwatch(producer)
        self._producer = None
        self._retired.clear()
        spool = self.spool
        if spool is not None:
            await spool.let_go(self)

    async def _stop_drain(self, timeout: float) -> None:
        """Let a drain step under way record its acknowledgements (else the next start
        would send those messages again), for up to `timeout` seconds, then stop it."""
        assert self._drain is not None and self.spool is not None
        lock = self.spool.draining
        held = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lock.acquire(), timeout)
            held = True
        self._drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain
        self._drain = None
        if held:
            lock.release()

    def health(self) -> bool:
        """False while librdkafka reports no broker connection up, unless the spool has
        room (a spooling target is degraded, not down)."""
        return self._brokers_up or self.spool_has_room()

    def spool_has_room(self) -> bool:
        """The spool takes messages (there is one, and it is not full)."""
        spool = self.spool
        return spool is not None and spool.ledger.takes_messages()

    def stats(self) -> dict[str, Any]:
        producer = self._producer
        out: dict[str, Any] = {
            "kind": self.kind,
            "address": self._redact(",".join(self.target.bootstrap_servers)),
            "brokers_up": self._brokers_up,
            "queued": 0 if producer is None else len(producer),
            "producers_replaced": self.replaced,
        }
        if self.spool is not None:
            out["spool"] = self.spool.stats()
        return out

    def status(self, request_id: str) -> SpoolState:
        """What became of the message whose request-id header is `request_id`."""
        return UNKNOWN if self.spool is None else self.spool.status(request_id)

    def check_topic(self, topic: str) -> None:
        """Refuse an empty topic, one Kafka would not take, or one outside the target's
        allow-list."""
        if topic in self._topics_ok:
            return
        name = self.target.name
        if not topic:
            raise InvalidRequestError(f"target {name!r}: topic is empty")
        if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise InvalidRequestError(
                f"target {name!r}: topic {shown(topic)} is not a Kafka topic name "
                "(1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-'; not '.' or '..')")
        if not any(p.fullmatch(topic) for p in self.target.topic_patterns):
            raise PermissionDeniedError(
                f"target {name!r}: topic {shown(topic)} is not allowed (topics)")
        if len(self._topics_ok) < _TOPICS_REMEMBERED:
            self._topics_ok.add(topic)

    async def publish(
        self, topic: str, messages: Iterable[OutgoingMessage | SidecarError], count: int,
        time_left: float,
    ) -> Outcomes:
        """Enqueue the `count` messages (pipelined) and wait for the brokers' acknowledgements.

        `messages` is walked once, as the producer's queue takes them: when it is
        full, the call waits for delivery reports to free room, so a batch larger
        than the queue is not held twice (here and in librdkafka). Answers a
        little before the caller's deadline: a message not acknowledged by then
        fails UNAVAILABLE, yet librdkafka may still deliver it later (within
        `producer.delivery_timeout`), so publishing is at-least-once; one the
        queue had no room for by then was not sent (RESOURCE_EXHAUSTED).
        A SidecarError in `messages` is a message refused before it was sent.
        With a spool, what cannot be acknowledged in time is spooled instead
        (kafka_spool.py says when).
        """
        if self.spool is not None:
            return await spool_call(self, self.spool, topic, messages, count, time_left)
        pending = await self.send(topic, messages, count, time_left, _REPLY_MARGIN)
        if isinstance(pending, Outcomes):
            return pending
        return self.answered(pending)

    async def spool_all(self, topic: str, messages: Iterable[OutgoingMessage | SidecarError],
                        count: int, reason: str) -> Outcomes:
        """Spool the call's messages without sending them (the breaker is open)."""
        assert self.spool is not None
        return await spool_call(self, self.spool, topic, messages, count, 0.0, forced=reason)

    def spooling(self) -> str | None:
        """Why new messages go straight to the spool, if they do: brokers unreachable."""
        if self._brokers_up:
            return None
        return f"brokers unreachable ({self._down_reason or 'no broker connection up'})"

    async def send(
        self, topic: str, messages: Iterable[OutgoingMessage | SidecarError], count: int,
        time_left: float, margin: float,
    ) -> _Pending | Outcomes:
        """Enqueue and wait until acknowledged or `margin` (at most a fifth of the time
        left) before the deadline: the call's pending outcomes, or its failure at once."""
        name = self.target.name
        producer, loop, wakes = self._producer, self._loop, self._wakes
        if time_left <= 0:
            return Outcomes.failed(count, UpstreamTimeoutError(
                f"target {name!r}: deadline exceeded"))
        if producer is None or loop is None or wakes is None or self._closing:
            return Outcomes.failed(count, UpstreamUnavailableError(
                f"target {name!r}: shutting down"))
        pending = _Pending(wakes, name, topic, count)
        answer_at = loop.time() + time_left - min(margin, time_left / 5)
        done = pending.done
        timer = None
        try:
            await self._produce(producer, loop, pending, messages, answer_at)
            self._kick()
            if not done.done():
                # A timer that settles `done` rather than asyncio.wait: that built a set, a
                # waiter future and callbacks per call (13% of a Publish's samples, py-spy).
                timer = loop.call_later(max(answer_at - loop.time(), 0), _time_up, done)
                await done
        finally:
            if timer is not None:
                timer.cancel()
            done.cancel()  # answered (or cancelled): later reports are not recorded
        return pending

    def answered(self, pending: _Pending) -> Outcomes:
        """The call's outcomes once answered: what has none failed for want of an ack."""
        name = self.target.name
        outcomes = pending.results
        if pending.left:
            outcomes.fill(UpstreamConnectError(
                f"target {name!r} unreachable: no broker acknowledgement before the deadline"
                f"{f' ({self._down_reason})' if self._down_reason else ''}; "
                "the message may still be delivered"
            ))
        if outcomes.delivered:
            self._epochs = -1  # delivering: epoch bumps so far were not a stuck producer
        return outcomes

    async def _produce(
        self, producer: Producer, loop: asyncio.AbstractEventLoop, pending: _Pending,
        messages: Iterable[OutgoingMessage | SidecarError], answer_at: float,
    ) -> None:
        """Hand every message to librdkafka, waiting while its queue is full for the
        poller's delivery reports to free room; what it could not take by `answer_at`
        (or once the producer is gone) is settled here as not sent."""
        name, topic = self.target.name, pending.topic
        reports = pending.report  # one bound method for the call, not one per message
        unsent: SidecarError | None = None
        for i, m in enumerate(messages):
            if isinstance(m, SidecarError):
                pending.settle(i, m)
                continue
            if unsent is not None:
                pending.settle(i, unsent)
                continue
            report = partial(reports, i)
            while True:
                try:
                    # Positional (see PRODUCE_ARGUMENTS): keywords cost a dict per call.
                    producer.produce(topic, m.value, m.key, m.partition, report, None,
                                     NOW, m.headers)
                except BufferError:
                    unsent = await self._room_for(producer, loop, answer_at)
                    if unsent is None:
                        continue
                    pending.settle(i, unsent)
                except KafkaException as e:
                    pending.settle(i, delivery_error(name, topic, e.args[0]))
                break
            if i % _PRODUCE_SLICE == _PRODUCE_SLICE - 1:
                self._kick()
                await asyncio.sleep(0)  # other calls and the poller run between slices
                unsent = self._gone(producer)

    async def _room_for(
        self, producer: Producer, loop: asyncio.AbstractEventLoop, answer_at: float
    ) -> SidecarError | None:
        """Wait for the poller to serve delivery reports (room in the queue), or for
        `_ROOM_WAIT` at most; why the message cannot be sent, if it cannot."""
        gone = self._gone(producer)
        if gone is not None:
            return gone
        left = answer_at - loop.time()
        if left <= 0:
            return LimitExceededError(
                f"target {self.target.name!r}: producer queue full, try again later")
        room = self._room
        if room is None or room.done():
            room = self._room = loop.create_future()
        self._kick()
        await asyncio.wait((room,), timeout=min(left, _ROOM_WAIT))
        return None

    def _send_stored(self, m: StoredMessage, settle: Callable[[Any], None]) -> None:
        """Hand a spooled message to the producer for the drain."""
        send_stored(None if self._closing else self._producer, self.target.name, m, settle)
        self._kick()

    def _gone(self, producer: Producer) -> SidecarError | None:
        """Why no more messages go to `producer`: closing, or replaced while a call ran."""
        if self._closing or self._producer is not producer:
            return UpstreamUnavailableError(
                f"target {self.target.name!r}: not sent, the producer was closed or replaced")
        return None

    def _new_producer(self) -> Producer:
        """A producer whose callbacks only count while it is the current one, served
        when librdkafka signals them where it can (`_watch`)."""
        self._generation += 1
        self._epochs = -1
        gen = self._generation
        config = {
            **self._config,
            "error_cb": lambda err: self._on_error(gen, err),
            "stats_cb": lambda stats: self._on_stats(gen, stats),
            "logger": ClientLog(self.target.name, self._redact),
        }
        try:
            producer = Producer(config)
        except KafkaException as e:
            # from None: the library's text may quote a config value (a password).
            reason = self._redact(redact_config_values(str(e.args[0].str()), self.target))
            raise ConfigError([f"targets.{self.target.name}.producer: {reason}"]) from None
        self._watch(producer)
        return producer

    def _kick(self) -> None:
        """Messages went out: without a wakeup pipe, the poller stops waiting idle."""
        if id(self._producer) not in self._wakeups:
            self._wake.set()

    def _watch(self, producer: Producer) -> None:
        """Serve `producer`'s callbacks when librdkafka signals them, where it can."""
        wakeup = wakeup_for(producer, str(self._config["client.id"]))
        if wakeup is not None and self._loop is not None:
            self._wakeups[id(producer)] = wakeup
            self._loop.add_reader(wakeup.fd, self._signalled, producer, wakeup)

    def _unwatch(self, producer: Producer) -> None:
        """No more signals from `producer` (before it is let go)."""
        wakeup = self._wakeups.pop(id(producer), None)
        if wakeup is not None:
            if self._loop is not None:
                self._loop.remove_reader(wakeup.fd)
            wakeup.close()

    def _signalled(self, producer: Producer, wakeup: Wakeup) -> None:
        wakeup.drain()
        self._serve(producer)

    def _serve(self, producer: Producer) -> None:
        """poll(0): its callbacks run; a fatal error of the current producer replaces it."""
        try:
            served = producer.poll(0)
        except KafkaException as e:  # a fatal error surfaces here too: replace it
            served = 0
            if producer is self._producer:
                self._replace(f"fatal error {e.args[0].name()}")
        room = self._room
        if served and room is not None and not room.done():
            room.set_result(None)  # delivery reports freed queue room

    async def _poll(self) -> None:
        """Serve librdkafka's callbacks: seldom where it signals them (a safety net for
        stats and a missed signal), every millisecond while messages are out otherwise."""
        while True:
            producer = self._producer
            assert producer is not None
            self._serve(producer)
            for old in list(self._retired):
                self._serve(old)
                if len(old) == 0:
                    self._retired.remove(old)
                    self._unwatch(old)
            producer = self._producer  # replaced, if it failed
            assert producer is not None
            if (len(producer) and id(producer) not in self._wakeups) or self._retired:
                await asyncio.sleep(_BUSY_POLL)
            else:
                self._wake.clear()  # publish() sets it: no idle wait before its reports
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL)

    def _replace(self, reason: str) -> None:
        """Retire a producer that cannot deliver any more; its callers get purge reports."""
        if self._closing:
            return  # close() is flushing the producers it has
        log.warning("kafka producer replaced: %s", reason,
                    extra={"fields": {"target": self.target.name}})
        old = self._producer
        self._producer = self._new_producer()
        self.replaced += 1
        if old is not None:
            old.purge(blocking=False)
            self._retired.append(old)

    def _on_error(self, gen: int, err: KafkaError) -> None:
        if gen != self._generation:
            return
        reason = _DOWN_REASONS.get(err.code())
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._set_up(False, reason)
        elif reason is not None:
            self._down_reason = reason
        if err.fatal():
            self._replace(f"fatal error {err.name()}")

    def _on_stats(self, gen: int, stats_json: str) -> None:
        if gen != self._generation:
            return
        stats = orjson.loads(stats_json)
        up = any(b.get("state") in _CONNECTED for b in stats.get("brokers", {}).values())
        self._set_up(up, self._down_reason)
        epochs = int(stats.get("eos", {}).get("producer_epoch", 0))
        if self._epochs < 0:
            self._epochs = epochs  # the baseline since the last delivery
        if up and epochs - self._epochs >= _STUCK_EPOCH_BUMPS:
            # A broker that lost its state (a fresh cluster on the same address)
            # refuses our producer id for good; a new producer gets a new one.
            self._replace("the brokers keep refusing its producer id")

    def _set_up(self, up: bool, reason: str | None) -> None:
        if up != self._brokers_up:
            fields = {"target": self.target.name}
            if up:
                log.info("kafka brokers reachable", extra={"fields": fields})
            else:
                log.warning("kafka brokers unreachable", extra={"fields": {
                    **fields, "reason": reason}})
        self._brokers_up = up
        self._down_reason = None if up else reason
