"""What the daemon relies on of confluent-kafka beyond its documentation: `produce` is
called positionally (a keyword dict per message cost a fifth of a produce), in the order
of its C signature, which the docstring does not give whole."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from sidecar.upstreams.kafka_messages import NOW, PRODUCE_ARGUMENTS
from tests.kafka_broker import Broker, broker

__all__ = ["broker"]  # the fixture, imported for pytest


@pytest.fixture
def producer() -> Producer:
    return Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})


def test_each_argument_is_at_the_position_the_daemon_passes_it(producer: Producer) -> None:
    args = ["t", b"v", b"k", -1, None, None, NOW]  # the last, headers, is checked below
    for position, name in enumerate(PRODUCE_ARGUMENTS[:len(args)], 1):
        if name == "on_delivery":
            continue  # an alias of callback: the report below shows which one is taken
        with pytest.raises(TypeError, match=rf"\('{name}'\) and position \({position}\)"):
            producer.produce(*args[:position], **{name: args[position - 1]})
    with pytest.raises(TypeError, match="headers"):
        producer.produce("t", b"v", b"k", -1, None, None, NOW, "not headers")


def test_a_positional_produce_arrives_whole_and_reports_to_its_callback(
    broker: Broker,
) -> None:
    topic = broker.create_topic(partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    reports: list[tuple[Any, ...]] = []

    def report(err: KafkaError | None, msg: Any) -> None:
        reports.append((err, msg.key(), msg.offset()))

    producer.produce(topic, b"value", b"key", 0, report, None, 1234, [("h", b"1")])
    producer.produce(topic, b"now", None, -1, report, None, NOW, [("h", b"2"), ("i", None)])
    assert producer.flush(15) == 0
    assert reports == [(None, b"key", 0), (None, None, 1)]
    first, second = broker.read_all(topic)
    assert (first.key(), first.value(), first.timestamp()[1]) == (b"key", b"value", 1234)
    assert first.headers() == [("h", b"1")]
    assert second.key() is None and second.value() == b"now"
    assert second.timestamp()[1] > 1_700_000_000_000  # stamped at produce time, in ms
    assert second.headers() == [("h", b"2"), ("i", None)]


def test_a_topic_the_brokers_refuse_by_name_is_the_callers_mistake_naming_it() -> None:
    from sidecar.errors import InvalidRequestError
    from sidecar.upstreams.kafka_config import delivery_error

    error = delivery_error("events", "t-" + "x" * 500, KafkaError(KafkaError.TOPIC_EXCEPTION))
    assert isinstance(error, InvalidRequestError)  # INVALID_ARGUMENT, not a retryable outage
    assert str(error).startswith("target 'events': the brokers refuse topic 't-xxx")
    assert len(str(error)) < 200
