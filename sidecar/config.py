"""The typed config model: frozen values, validated once by `config_loader`.

Durations are seconds, sizes bytes, globs compiled, `${VAR}` substituted, so
the data path never looks at raw config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.status import NAMES

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes, the last one a NUL
LOG_LEVELS = ("debug", "info", "warning", "error")
GRPC_CODES = NAMES
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
DEFAULT_MAX_BODY = 16 * 1024 * 1024


UNKNOWN_PEER = ("reject", "allow")  # identity.unknown_peer
RATE_LIMIT_PER = ("listener", "caller")  # rate_limit.per


@dataclass(frozen=True, slots=True)
class PeerRule:
    """`identity.peers[]`: a connecting process with this uid (or gid) is `user_id`."""

    user_id: str
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str | None = None
    trust_caller: bool = True
    require_user: bool = False
    peers: tuple[PeerRule, ...] = ()  # first match wins
    # The loader's default: reject once `peers` is given, allow (as before) without it.
    unknown_peer: str = "allow"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`rate` calls a second (with `burst` saved), for the listener or for each caller."""

    rate: float
    burst: int
    per: str = "listener"


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    target: str
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    socket: str
    mode: int = 0o660
    identity: Identity = field(default_factory=Identity)
    default_target: str | None = None
    routes: tuple[Route, ...] = ()
    targets: tuple[str, ...] | None = None  # allow-list of names or globs; None: all
    rate_limit: RateLimit | None = None
    engine: str = "frames"  # the daemon's own HTTP/2 engine (sidecar/engine/), the only one
    idle_timeout: float = 300.0  # seconds a caller connection may stay without streams
    max_connections: int = 1000  # caller connections per listener; more are closed
    # bytes of native calls' requests not yet complete held at once (at least max_message)
    max_request_buffer: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reload:
    """Reload on SIGHUP always; with `watch`, also when the config file changes."""

    watch: bool = False
    debounce: float = 0.25  # seconds of quiet after a change before the file is read


@dataclass(frozen=True, slots=True)
class Admin:
    """Admin HTTP endpoint: `host:port`, or `unix_path`; both None means off."""

    host: str | None = "127.0.0.1"
    port: int | None = 9901
    unix_path: str | None = None

    @property
    def enabled(self) -> bool:
        return self.unix_path is not None or self.host is not None


@dataclass(frozen=True, slots=True)
class Log:
    level: str = "info"
    access: bool = True


@dataclass(frozen=True, slots=True)
class Tracing:
    otlp_endpoint: str | None = None
    sample_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Telemetry:
    tracing: Tracing = field(default_factory=Tracing)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.025
    max: float = 1.0


@dataclass(frozen=True, slots=True)
class Budget:
    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    budget: Budget = field(default_factory=Budget)
    on: tuple[str | int, ...] = ()  # extra gRPC code names / HTTP statuses to retry
    per_try_timeout: float | None = None
    non_idempotent: bool = False


@dataclass(frozen=True, slots=True)
class Breaker:
    failures: int = 5
    reset: float = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_in_flight: int = 1000
    max_message: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Defaults:
    timeout: float = 5.0
    retry: Retry = field(default_factory=Retry)
    breaker: Breaker = field(default_factory=Breaker)
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class Tls:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False


# What a caller may send for the identity the daemon injects (DESIGN.md, "Metadata"):
# never forwarded as the caller sent it, to a target of any kind.
CALLER_IDENTITY_NAMES = (
    "x-user-id", "user-id", "x-correlation-id", "correlation-id", "request-id",
    "x-request-id", "traceparent", "tracestate",
)


@dataclass(frozen=True, slots=True)
class MetadataNames:
    """Names the identity metadata carries upstream (per target, per kind).

    `reserved` is every name, lower case, a caller's metadata may not carry to this
    target: the names above, the contract's caller-side names, and their `-bin` forms."""

    user_id: str
    correlation_id: str
    request_id: str
    caller_uid: str | None = None  # the peer's uid; not sent unless named
    reserved: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {self.user_id, self.correlation_id, self.request_id, *CALLER_IDENTITY_NAMES}
        if self.caller_uid is not None:
            names.add(self.caller_uid)
        lower = {n.lower() for n in names}
        object.__setattr__(self, "reserved", frozenset(lower | {f"{n}-bin" for n in lower}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What every target kind has: a name and its resilience policy."""

    name: str
    timeout: float
    retry: Retry
    breaker: Breaker
    limits: Limits
    required: bool = False
    metadata: MetadataNames

    kind = "none"


@dataclass(frozen=True, slots=True)
class GrpcPool:
    connections: int = 1
    # gRPC servers refuse pings more often than every 5 minutes by default.
    keepalive: float = 300.0
    keepalive_timeout: float = 20.0  # frames: an unanswered PING closes the connection
    dns_ttl: float = 300.0  # frames: a dns name is resolved again after this
    # frames: wait between connects to an endpoint after failures (exponential, jitter)
    reconnect: Backoff = field(default_factory=lambda: Backoff(0.1, 5.0))


@dataclass(frozen=True, slots=True)
class Outlier:
    """frames: eject an endpoint for a while after consecutive connect failures (0: never)."""

    consecutive_failures: int = 5
    ejection: float = 30.0  # times the ejections in a row
    max_ejection: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcTarget(Target):
    address: str
    tls: Tls | None = None
    forward_authorization: bool = False
    pool: GrpcPool = field(default_factory=GrpcPool)
    outlier: Outlier = field(default_factory=Outlier)

    kind = "grpc"


@dataclass(frozen=True, slots=True)
class HttpPool:
    max_connections: int = 100
    max_per_host: int = 100
    keepalive: float = 30.0
    dns_ttl: float = 300.0


@dataclass(frozen=True, slots=True)
class HttpHealth:
    path: str = "/health"
    interval: float = 10.0
    timeout: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpTarget(Target):
    base_url: str
    unix_socket: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    pool: HttpPool = field(default_factory=HttpPool)
    tls: Tls | None = None
    forward_authorization: bool = False
    health: HttpHealth | None = None
    max_body: int = DEFAULT_MAX_BODY  # request and response bodies, each

    kind = "http"


@dataclass(frozen=True, slots=True)
class Producer:
    acks: str = "all"
    idempotence: bool = True
    linger: float = 0.005
    compression: str = "none"
    delivery_timeout: float = 30.0
    config: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Spool:
    """`targets.<name>.spool`: where messages wait durably while the brokers are away."""

    dir: str
    max_bytes: int = 1024**3
    retention: float = 3600.0  # how long a spooled message's status is kept once final


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaTarget(Target):
    bootstrap_servers: tuple[str, ...]
    topics: tuple[str, ...] = ("*",)
    topic_patterns: tuple[re.Pattern[str], ...] = ()
    producer: Producer = field(default_factory=Producer)
    max_message_bytes: int = 1024 * 1024
    spool: Spool | None = None  # off unless configured

    kind = "kafka"


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[Listener, ...]
    targets: Mapping[str, Target]
    admin: Admin = field(default_factory=Admin)
    drain_timeout: float = 10.0
    reload: Reload = field(default_factory=Reload)
    log: Log = field(default_factory=Log)
    telemetry: Telemetry = field(default_factory=Telemetry)
    defaults: Defaults = field(default_factory=Defaults)
    source: str | None = None
    # Values substituted from `${VAR}`: blanked out of library log lines; never shown.
    secrets: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def max_message(self) -> int:
        """A listener takes the largest `max_message` of the targets it can reach."""
        sizes = [t.limits.max_message for t in self.targets.values()]
        return max([self.defaults.limits.max_message, *sizes])
