"""librdkafka's side of a kafka target, without a producer running: the settings built
from the target's config (and checked for `check-config`), librdkafka's delivery
errors in our words, naming the target, and its log lines as the daemon's."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from sidecar.config import KafkaTarget
from sidecar.errors import (
    InvalidRequestError,
    LimitExceededError,
    PermissionDeniedError,
    SidecarError,
    UpstreamUnavailableError,
    shown,
)
from sidecar.telemetry.redaction import Redactor

log = logging.getLogger("sidecar.kafka")
STATS_MS = 1000  # broker states for health(), and the stuck-producer check
_QUEUE_MESSAGES = 100_000  # librdkafka's own default; the byte bound below is ours
_QUEUE_KBYTES = 64 * 1024
_FRAMING = 64 * 1024  # message.max.bytes headroom over max_message_bytes (record framing)
_RECONNECT_MAX_MS = 2000  # librdkafka's 10 s default would delay recovery after an outage
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE})
_NO_TOPIC = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})


def producer_problems(target: KafkaTarget) -> list[str]:
    """What librdkafka refuses in a target's producer settings, without connecting
    (for `check-config`); values are never quoted."""
    config = {**producer_config(target), "logger": _Silent()}
    config.pop("bootstrap.servers", None)  # a producer with no brokers never connects
    try:
        Producer(config)
    except KafkaException as e:
        reason = redact_config_values(str(e.args[0].str()), target)
        return [f"targets.{target.name}.producer: {reason}"]
    return []


class _Silent:
    """Drops librdkafka's log lines (a validation-only producer has nothing to say)."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        return None


def producer_config(target: KafkaTarget) -> dict[str, Any]:
    """librdkafka settings from the target; `producer.config` pairs apply last."""
    p = target.producer
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(target.bootstrap_servers),
        "client.id": f"sidecar-{target.name}",
        "acks": p.acks,
        "enable.idempotence": p.idempotence,
        "linger.ms": p.linger * 1000,
        "compression.type": p.compression,
        "message.timeout.ms": max(int(p.delivery_timeout * 1000), 1),
        "message.max.bytes": min(max(target.max_message_bytes + _FRAMING, 1_000_000),
                                 1_000_000_000),
        "queue.buffering.max.messages": _QUEUE_MESSAGES,
        "queue.buffering.max.kbytes": max(_QUEUE_KBYTES, 2 * target.max_message_bytes // 1024),
        "statistics.interval.ms": STATS_MS,
        "reconnect.backoff.max.ms": _RECONNECT_MAX_MS,
    }
    config.update(p.config)
    return config


def delivery_error(target: str, topic: str, err: KafkaError) -> SidecarError:
    """Our error for a message librdkafka could not deliver (or enqueue)."""
    code = err.code()
    where = f"target {target!r}"
    if code == KafkaError._MSG_TIMED_OUT:
        return UpstreamUnavailableError(
            f"{where} unreachable: not acknowledged within producer.delivery_timeout")
    if code in _TOO_LARGE:
        return LimitExceededError(f"{where}: message too large for the brokers")
    if code == KafkaError._QUEUE_FULL:
        return LimitExceededError(f"{where}: producer queue full, try again later")
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return PermissionDeniedError(f"{where}: the brokers refuse writes to topic {topic!r}")
    if code in _NO_TOPIC:
        return InvalidRequestError(f"{where}: topic {topic!r} does not exist")
    if code == KafkaError.TOPIC_EXCEPTION:  # a name the brokers' own rules refuse
        return InvalidRequestError(f"{where}: the brokers refuse topic {shown(topic)} as a name")
    if code == KafkaError._UNKNOWN_PARTITION:
        return InvalidRequestError(f"{where}: no such partition of topic {topic!r}")
    if code in _PURGED:
        return UpstreamUnavailableError(f"{where}: not sent, the producer was closed or replaced")
    return UpstreamUnavailableError(f"{where}: not delivered: {err.name()}")


def redact_config_values(text: str, target: KafkaTarget) -> str:
    """The text with every configured producer value blanked out."""
    for _, value in target.producer.config:
        if value:
            text = text.replace(value, "***")
    return text


class ClientLog:
    """librdkafka's log lines as the daemon's, with the target's name and no `${VAR}`
    value. Connection failures (FAIL) repeat on every reconnect: debug, as the daemon
    logs reachability."""

    def __init__(self, target: str, redact: Redactor) -> None:
        self._extra = {"fields": {"target": target}}
        self._redact = redact

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if args and args[0] == "FAIL":
            level = logging.DEBUG
        if log.isEnabledFor(level):
            text = fmt % args if args else fmt  # formatted first: values hide in args
            log.log(level, "%s", self._redact(text), extra=self._extra)
