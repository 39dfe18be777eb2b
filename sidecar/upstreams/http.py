"""Upstream HTTP targets (work in progress: HttpProxy.Call)."""

from __future__ import annotations

from typing import Any

from sidecar.config import HttpTarget


class HttpUpstream:
    kind = "http"

    def __init__(self, target: HttpTarget) -> None:
        self.target = target

    async def start(self) -> None:
        return None

    async def close(self, timeout: float) -> None:
        return None

    def health(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.target.base_url}
