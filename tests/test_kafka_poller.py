"""The Kafka poller survives a fatal client error by replacing the producer."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException

import sidecar.upstreams.kafka as kafka
from sidecar.config import KafkaTarget
from sidecar.config_loader import parse_config
from tests.conftest import eventually_async


class FatalOnce:
    """Stands in for confluent_kafka.Producer: the first producer's poll fails fatally."""

    made: ClassVar[list[FatalOnce]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.polls = 0
        self.first = not FatalOnce.made
        FatalOnce.made.append(self)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        if self.first:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, fatal=True))
        return 0

    def __len__(self) -> int:
        return 0

    def purge(self, blocking: bool = True) -> None:
        return None


async def test_fatal_error_from_poll_replaces_the_producer_and_polling_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "Producer", FatalOnce)
    FatalOnce.made = []
    config = parse_config({
        "listeners": [{"name": "a", "socket": "/tmp/a.sock"}],
        "targets": {"k": {"kind": "kafka", "bootstrap_servers": ["127.0.0.1:9"]}},
    }, env={})
    target = config.targets["k"]
    assert isinstance(target, KafkaTarget)
    upstream = kafka.KafkaUpstream(target)
    await upstream.start()
    await eventually_async(lambda: len(FatalOnce.made) == 2 and FatalOnce.made[1].polls > 0)
    assert upstream.replaced == 1
    assert FatalOnce.made[1].polls > 0  # the poller kept going with the new producer
    await upstream.close(0.1)
