"""One module per upstream kind, each with the same small shape (`Upstream`)."""

from __future__ import annotations

from typing import Any, Protocol

from sidecar.config import GrpcTarget, HttpTarget, KafkaTarget, Target
from sidecar.telemetry.redaction import NO_SECRETS, Redactor


class Upstream(Protocol):
    """What the runtime needs of every upstream kind."""

    kind: str

    async def start(self) -> None:
        """Open pools and clients (connections may open lazily), and start watching
        reachability: an unreachable target is one warning line naming the reason."""

    async def close(self, timeout: float) -> None:
        """Finish what was accepted (flush) within `timeout` seconds, then release all."""

    def health(self) -> bool:
        """False while the target is known to be unreachable."""

    def stats(self) -> dict[str, Any]:
        """A JSON-ready view for /status (no secrets)."""


def build_upstream(target: Target, redact: Redactor = NO_SECRETS) -> Upstream:
    """The registry: one line per kind. `redact` blanks `${VAR}` values out of what
    the upstream's library writes."""
    if isinstance(target, GrpcTarget):
        from sidecar.upstreams.grpc import GrpcUpstream

        return GrpcUpstream(target, redact)
    if isinstance(target, HttpTarget):
        from sidecar.upstreams.http import HttpUpstream

        return HttpUpstream(target, redact)
    if isinstance(target, KafkaTarget):
        from sidecar.upstreams.kafka import KafkaUpstream

        return KafkaUpstream(target, redact)
    raise TypeError(f"no upstream for target kind {target.kind}")
