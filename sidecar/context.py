"""Per-call context: who is calling, the ids that follow the call, its trace.

Built once per incoming call from the caller's metadata, the listener's identity
policy and the connection's peer (SO_PEERCRED); protocol-free (metadata is a sequence of
name/value pairs), so every engine and upstream kind shares it. `caller_metadata` is the
one filter that keeps a caller's metadata from posing as what the daemon injects.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sidecar.config import Identity, MetadataNames
from sidecar.errors import UnauthenticatedError

if TYPE_CHECKING:
    from sidecar.engine.peer import Peer
    from sidecar.resilience.policy import TargetPolicy
    from sidecar.telemetry.tracing import CallTrace

V = TypeVar("V")

TARGET_KEY = "sidecar-target"
_USER_KEYS = ("x-user-id", "user-id")
_CORRELATION_KEYS = ("x-correlation-id", "correlation-id")
# Metadata the daemon reads or replaces itself, and transport headers grpc sets.
_DAEMONS = frozenset({
    *_USER_KEYS, *_CORRELATION_KEYS, "request-id", "x-request-id",
    "traceparent", "tracestate", "authorization",
})
_NOT_FORWARDED = frozenset({
    *_DAEMONS, *(f"{k}-bin" for k in _DAEMONS),  # a -bin form is never read, nor forwarded
    ":authority", "user-agent", "content-type", "te", "grpc-timeout",
    "grpc-encoding", "grpc-accept-encoding",
})
_CORRELATION = re.compile(r"[\x20-\x7e]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_ONE_TRACE = "0" * 31 + "1"  # ids are never all zeros (W3C trace context)
_ONE_SPAN = "0" * 15 + "1"
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}
# Ids need to be unique and unguessable enough to trace by, not secret: a PRNG seeded from
# os.urandom (as OpenTelemetry's own id generator does) saves a getrandom() call per id.
_bits = random.Random().getrandbits

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(slots=True, init=False)
class CallContext:
    """What the daemon knows of one call, and what it forwards. (Its `__init__` is written
    out, as the engine's events' are: the one `dataclass` writes stays interpreted.)"""

    user_id: str | None
    correlation_id: str
    request_id: str
    trace_id: str
    span_id: str  # the daemon's span: the upstream's parent
    trace_flags: str
    tracestate: str | None
    continued: bool  # the caller sent a valid traceparent
    parent_span_id: str  # the caller's span, when continued
    authorization: str | None
    target_hint: str | None  # caller's `sidecar-target`
    passthrough: list[tuple[str, str | bytes]]  # caller metadata forwarded as is
    peer: Peer | None  # the connecting process (SO_PEERCRED), when known
    peer_user: str | None  # the user id `identity.peers` maps the peer to
    caller_key: str | int | None  # whom a per-caller rate limit counts the call to
    trace: CallTrace | None  # set when tracing is on
    # What became of the call upstream, for its access line and span (telemetry/hub.py):
    attempts: int  # upstream attempts made
    upstream_status: int | None  # the last attempt's gRPC status or HTTP status
    request_bytes: int  # sent upstream: gRPC DATA, an HTTP body, Kafka keys and values
    response_bytes: int  # received: gRPC DATA, an HTTP body
    flags: str  # Envoy-style response flags, comma-separated (add_flag)
    facts: dict[str, Any] | None  # kind-specific ones (a Kafka partition, offset)

    def __init__(self, *, user_id: str | None, correlation_id: str, request_id: str, trace_id: str,
                 span_id: str, trace_flags: str, tracestate: str | None, continued: bool,
                 parent_span_id: str, authorization: str | None, target_hint: str | None,
                 passthrough: list[tuple[str, str | bytes]], peer: Peer | None = None,
                 peer_user: str | None = None, caller_key: str | int | None = None,
                 trace: CallTrace | None = None, attempts: int = 0,
                 upstream_status: int | None = None, request_bytes: int = 0,
                 response_bytes: int = 0, flags: str = "",
                 facts: dict[str, Any] | None = None) -> None:
        self.user_id = user_id
        self.correlation_id = correlation_id
        self.request_id = request_id
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_flags = trace_flags
        self.tracestate = tracestate
        self.continued = continued
        self.parent_span_id = parent_span_id
        self.authorization = authorization
        self.target_hint = target_hint
        self.passthrough = passthrough
        self.peer = peer
        self.peer_user = peer_user
        self.caller_key = caller_key
        self.trace = trace
        self.attempts = attempts
        self.upstream_status = upstream_status
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes
        self.flags = flags
        self.facts = facts

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.trace_flags}"

    def identity_metadata(self, names: MetadataNames) -> list[tuple[str, str]]:
        """The contract's injected metadata, under a target's names (traceparent included)."""
        out = []
        if self.user_id:
            out.append((names.user_id, self.user_id))
        out.append((names.correlation_id, self.correlation_id))
        out.append((names.request_id, self.request_id))
        out.append(("traceparent", self.traceparent))
        if self.tracestate:
            out.append(("tracestate", self.tracestate))
        if names.caller_uid is not None and self.peer is not None:
            out.append((names.caller_uid, str(self.peer.uid)))
        return out

    def begin_attempt(self, policy: TargetPolicy, operation: str = "", where: str = "") -> str:
        """The traceparent for one upstream attempt to `policy`'s target (its own span when
        tracing is on). `operation` and `where`: an HTTP method and path, a Kafka topic."""
        self.attempts += 1
        self.upstream_status = None
        if self.trace is None:
            return self.traceparent
        return self.trace.begin_attempt(policy, operation, where)

    def end_attempt(self, error: str | BaseException | None, status: int | None = None,
                    ) -> None:
        """The attempt is over: the upstream's gRPC or HTTP `status`, if it sent one; the
        daemon's error, or a status name, when it failed."""
        self.upstream_status = status
        if self.trace is not None:
            self.trace.end_attempt(error, status, self.facts)

    def add_flag(self, flag: str) -> None:
        if flag and flag not in self.flags.split(","):
            self.flags = f"{self.flags},{flag}" if self.flags else flag


def build_context(metadata: Iterable[tuple[str, str | bytes]], identity: Identity,
                  peer: Peer | None = None) -> CallContext:
    """Read the caller's metadata under a listener's identity policy; a peer that
    `identity.peers` maps is its user id, whatever the caller says."""
    caller_user = correlation = traceparent = tracestate = authorization = hint = None
    passthrough: list[tuple[str, str | bytes]] = []
    for key, value in metadata:
        if key not in _NOT_FORWARDED and not key.startswith(("sidecar-", "grpc-")):
            passthrough.append((key, value))
        elif isinstance(value, bytes):
            continue
        elif key in _USER_KEYS:
            caller_user = caller_user or value
        elif key in _CORRELATION_KEYS:
            correlation = correlation or value
        elif key == "traceparent":
            traceparent = value
        elif key == "tracestate":
            tracestate = value
        elif key == "authorization":
            authorization = value
        elif key == TARGET_KEY:
            hint = value
    peer_user = None if peer is None or not identity.peers else mapped_user(identity, peer)
    claimed = caller_user if identity.trust_caller else None
    user = peer_user or claimed or identity.user_id
    if peer_user is not None or claimed:
        caller_key: str | int | None = user
    else:
        caller_key = identity.user_id if peer is None else peer.uid
    fresh = _fresh_hex()
    if correlation is None or not _CORRELATION.fullmatch(correlation):
        correlation = _uuid4_at(fresh, 32)
    trace_id, parent, flags = _continue_trace(traceparent, fresh)
    continued = parent is not None
    span_id = fresh[96:112]
    return CallContext(
        user_id=user,
        correlation_id=correlation,
        request_id=_uuid4_at(fresh, 0),
        trace_id=trace_id,
        span_id=span_id if span_id != _ZERO_SPAN else _ONE_SPAN,
        trace_flags=flags,
        tracestate=tracestate if continued else None,
        continued=continued,
        parent_span_id=parent or "",
        authorization=authorization,
        target_hint=hint,
        passthrough=passthrough,
        peer=peer,
        peer_user=peer_user,
        caller_key=caller_key,
    )


def mapped_user(identity: Identity, peer: Peer) -> str | None:
    """The user id of the first `identity.peers` rule the peer's uid or gid matches."""
    uid, gid = peer.uid, peer.gid
    for rule in identity.peers:
        if (rule.gid == gid) if rule.uid is None else (rule.uid == uid):
            return rule.user_id
    return None


def caller_metadata(pairs: Iterable[tuple[str, V]], reserved: frozenset[str]
                    ) -> list[tuple[str, V]]:
    """The caller's metadata (gRPC metadata, HTTP headers, Kafka headers) without the
    names, in any case, the daemon injects for a target (`MetadataNames.reserved`, and
    whatever else a kind adds to it): the one place a caller is kept from posing as the
    daemon's identity, correlation or request ids, for every kind."""
    return [(k, v) for k, v in pairs if k.lower() not in reserved]


def require_identity(ctx: CallContext, identity: Identity, listener: str) -> None:
    """Refuse a call without a user id on a listener that requires one."""
    if identity.require_user and not ctx.user_id:
        raise UnauthenticatedError(
            f"listener {listener!r} requires a user id (send x-user-id metadata)"
        )


def _fresh_hex() -> str:
    """112 random hex digits, what a call's new ids are cut from (two UUID4s, a trace id,
    a span id): one draw and one conversion rather than a formatted integer per id
    (bytes.hex is several times cheaper than formatting a big integer in hex)."""
    return _bits(448).to_bytes(56, "little").hex()


def _uuid4_at(h: str, at: int) -> str:
    """A random UUID4 in its canonical text form (a fraction of `str(uuid.uuid4())`'s
    cost): the text of the 32 hex digits of `h` from `at`: version nibble 4, variant bits
    10 (the first digit of the fourth group is 8-b)."""
    return (f"{h[at:at + 8]}-{h[at + 8:at + 12]}-4{h[at + 13:at + 16]}-"
            f"{_VARIANT[h[at + 16]]}{h[at + 17:at + 20]}-{h[at + 20:at + 32]}")


def _continue_trace(traceparent: str | None, fresh: str) -> tuple[str, str | None, str]:
    """Trace id, the caller's span id (None for a new trace), and flags; a new trace's id
    is cut from `fresh` (random hex)."""
    if traceparent is not None:
        m = _TRACEPARENT.fullmatch(traceparent.strip())
        if m and m[1] != "ff" and m[2] != _ZERO_TRACE and m[3] != _ZERO_SPAN:
            return m[2], m[3], m[4]
    trace_id = fresh[64:96]
    return (trace_id if trace_id != _ZERO_TRACE else _ONE_TRACE), None, "01"
