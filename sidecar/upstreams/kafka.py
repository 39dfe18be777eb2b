"""Upstream Kafka targets (work in progress: Publisher)."""

from __future__ import annotations

from typing import Any

from sidecar.config import KafkaTarget


class KafkaUpstream:
    kind = "kafka"

    def __init__(self, target: KafkaTarget) -> None:
        self.target = target

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> None:
        return None

    def health(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": ",".join(self.target.bootstrap_servers)}
