"""Loads YAML into the typed model of `config.py`, reporting every problem by key path."""

from __future__ import annotations

import math
import os
import re
import ssl
import tempfile
from collections.abc import Mapping
from typing import Any

import yaml

from sidecar.config import (
    DEFAULT_MAX_BODY,
    GRPC_CODES,
    LOG_LEVELS,
    MAX_SOCKET_PATH,
    RATE_LIMIT_PER,
    UNKNOWN_PEER,
    Admin,
    Backoff,
    Breaker,
    Budget,
    Config,
    Defaults,
    GrpcPool,
    GrpcTarget,
    HttpHealth,
    HttpPool,
    HttpTarget,
    Identity,
    KafkaTarget,
    Limits,
    Listener,
    Log,
    MetadataNames,
    MetricsConfig,
    Outlier,
    PeerRule,
    Producer,
    RateLimit,
    Reload,
    Retry,
    Route,
    Spool,
    Target,
    Telemetry,
    Tls,
    Tracing,
)
from sidecar.config_values import Problems, Section, glob_pattern, substitute_env
from sidecar.engine.dns import parse_address
from sidecar.errors import ConfigError

TOP_KEYS = (
    "listeners", "admin", "drain_timeout", "reload", "log", "telemetry", "defaults", "targets",
)
POLICY_KEYS = ("timeout", "retry", "breaker", "limits")
ENGINES = ("frames",)  # listeners[].engine
COMMON_TARGET_KEYS = ("kind", "required", "metadata", *POLICY_KEYS)
KIND_KEYS = {
    "grpc": ("address", "tls", "forward_authorization", "pool", "outlier"),
    "http": (
        "base_url", "unix_socket", "headers", "pool", "tls", "forward_authorization", "health",
        "max_body",
    ),
    "kafka": ("bootstrap_servers", "topics", "producer", "max_message_bytes", "spool"),
}
METADATA_DEFAULTS = {
    "grpc": MetadataNames("user-id", "correlation-id", "request-id"),
    "http": MetadataNames("X-User-Id", "X-Correlation-Id", "X-Request-Id"),
    "kafka": MetadataNames("user-id", "correlation-id", "request-id"),
}
_GRPC_ADDRESS = re.compile(
    r"^(unix:/.+|unix-abstract:.+|dns:(//[^/]*)?/.+|ipv4:.+|ipv6:.+|[^/\s]+:\d+)$"
)
_KAFKA_ACKS = ("all", "-1", "0", "1")
# `rate_limit.rate`: calls per unit (`100/s`, `6000/m`) or per duration (`5/250ms`).
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(us|ms|s|m|h)\s*$")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]+")
_RATE_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
LISTENER_KEYS = (
    "name", "socket", "mode", "identity", "default_target", "routes", "targets", "rate_limit",
    "engine", "idle_timeout", "max_connections", "max_request_buffer",
)
IDENTITY_KEYS = ("user_id", "trust_caller", "require_user", "peers", "unknown_peer")
_COMPRESSION = ("none", "gzip", "snappy", "lz4", "zstd")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `on:` stays a key."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute, validate; raise ConfigError listing every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_Yaml12Loader)  # a SafeLoader: no arbitrary objects
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from e
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from e
    return parse_config(raw, source=os.path.abspath(path), env=env)


def parse_config(
    raw: Any, *, source: str | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed YAML document into a Config."""
    problems = Problems()
    raw = substitute_env(raw, "", problems, os.environ if env is None else env)
    top = Section(problems, {} if raw is None else raw, "", TOP_KEYS)
    defaults = _defaults(top.section("defaults", POLICY_KEYS))
    targets = _targets(top, defaults)
    config = Config(
        listeners=_listeners(top, targets),
        targets=targets,
        admin=_admin(top),
        drain_timeout=top.duration("drain_timeout", 10.0, allow_zero=True),
        reload=_reload(top.section("reload", ("watch", "debounce"))),
        log=_log(top.section("log", ("level", "access"))),
        telemetry=_telemetry(top.section("telemetry", ("tracing", "metrics"))),
        defaults=defaults,
        source=source,
        secrets=frozenset(problems.secret_values),
    )
    if problems.lines:
        raise ConfigError(problems.lines)
    return config


def _defaults(s: Section) -> Defaults:
    base = Defaults()
    return Defaults(
        timeout=s.duration("timeout", base.timeout),
        retry=_retry(s.section("retry", RETRY_KEYS), base.retry),
        breaker=_breaker(s.section("breaker", ("failures", "reset")), base.breaker),
        limits=_limits(s.section("limits", ("max_in_flight", "max_message")), base.limits),
    )


RETRY_KEYS = ("attempts", "backoff", "budget", "on", "per_try_timeout", "non_idempotent")


def _retry(s: Section, base: Retry) -> Retry:
    b = s.section("backoff", ("base", "max"))
    backoff = Backoff(b.duration("base", base.backoff.base), b.duration("max", base.backoff.max))
    if backoff.max < backoff.base:
        b.fail("max", "must be >= backoff.base")
    g = s.section("budget", ("ratio", "min_per_second", "window"))
    budget = Budget(
        ratio=g.number("ratio", base.budget.ratio),
        min_per_second=g.number("min_per_second", base.budget.min_per_second),
        window=g.duration("window", base.budget.window),
    )
    on = base.on if not s.has("on") else tuple(_retry_on(s))
    return Retry(
        attempts=s.integer("attempts", base.attempts, minimum=1),
        backoff=backoff,
        budget=budget,
        on=on,
        per_try_timeout=s.optional_duration("per_try_timeout") or base.per_try_timeout,
        non_idempotent=s.boolean("non_idempotent", base.non_idempotent),
    )


def _retry_on(s: Section) -> list[str | int]:
    out: list[str | int] = []
    for path, item in s.items("on"):
        if isinstance(item, str) and path in s.problems.env_names and item.strip().isdigit():
            item = int(item)  # an HTTP status from `${VAR}`, read as YAML reads the number
            s.problems.typed_paths.add(path)
        if isinstance(item, str) and item.upper() in GRPC_CODES and item.upper() != "OK":
            out.append(item.upper())
        elif isinstance(item, int) and not isinstance(item, bool) and 500 <= item <= 599:
            out.append(item)
        else:
            s.problems.add(path, "must be a gRPC status code name or an HTTP 5xx status")
    return out


def _breaker(s: Section, base: Breaker) -> Breaker:
    return Breaker(
        failures=s.integer("failures", base.failures, minimum=1),
        reset=s.duration("reset", base.reset),
    )


def _limits(s: Section, base: Limits) -> Limits:
    return Limits(
        max_in_flight=s.integer("max_in_flight", base.max_in_flight, minimum=1),
        max_message=s.size("max_message", base.max_message),
    )


def _targets(top: Section, defaults: Defaults) -> dict[str, Target]:
    raw = top.raw.get("targets")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        top.fail("targets", "must be a mapping of target names to targets")
        return {}
    targets: dict[str, Target] = {}
    for name, body in raw.items():
        path = top.key_path(f"targets.{name}")
        kind = body.get("kind") if isinstance(body, dict) else None
        if not isinstance(kind, str) or kind not in KIND_KEYS:
            shown = top.problems.show(f"{path}.kind", kind)
            reason = "is required" if kind is None else f"must be grpc, http or kafka, got {shown}"
            top.problems.add(f"{path}.kind", reason)
            continue
        s = Section(top.problems, body, path, COMMON_TARGET_KEYS + KIND_KEYS[kind])
        targets[str(name)] = _READERS[kind](s, str(name), _policy(s, kind, defaults))
    return targets


def _policy(s: Section, kind: str, d: Defaults) -> dict[str, Any]:
    names = METADATA_DEFAULTS[kind]
    m = s.section("metadata", ("user_id", "correlation_id", "request_id", "caller_uid"))
    return {
        "timeout": s.duration("timeout", d.timeout),
        "retry": _retry(s.section("retry", RETRY_KEYS), d.retry),
        "breaker": _breaker(s.section("breaker", ("failures", "reset")), d.breaker),
        "limits": _limits(s.section("limits", ("max_in_flight", "max_message")), d.limits),
        "required": s.boolean("required", False),
        "metadata": MetadataNames(
            m.string("user_id", names.user_id),
            m.string("correlation_id", names.correlation_id),
            m.string("request_id", names.request_id),
            m.optional_string("caller_uid"),
        ),
    }


def _grpc_target(s: Section, name: str, policy: dict[str, Any]) -> GrpcTarget:
    address = s.required_string("address")
    if address and not _GRPC_ADDRESS.match(address):
        s.fail("address", "must be unix:///path, dns:///host:port or host:port")
    elif address:
        try:  # as the engine's pool will read it
            parse_address(address)
        except ValueError as e:
            s.fail("address", str(e))
    tls = _tls(s)
    if tls is not None and tls.insecure_skip_verify:
        s.problems.add(
            f"{s.key_path('tls')}.insecure_skip_verify",
            "not supported for grpc targets (grpcio always verifies); set tls.ca_file",
        )
    p = s.section("pool", ("connections", "keepalive", "keepalive_timeout", "dns_ttl",
                           "reconnect"))
    base = GrpcPool()
    r = p.section("reconnect", ("base", "max"))
    reconnect = Backoff(r.duration("base", base.reconnect.base),
                        r.duration("max", base.reconnect.max))
    if reconnect.max < reconnect.base:
        r.fail("max", "must be >= reconnect.base")
    pool = GrpcPool(
        p.integer("connections", base.connections, minimum=1),
        p.duration("keepalive", base.keepalive),
        p.duration("keepalive_timeout", base.keepalive_timeout),
        p.duration("dns_ttl", base.dns_ttl),
        reconnect,
    )
    o = s.section("outlier", ("consecutive_failures", "ejection", "max_ejection"))
    default = Outlier()
    outlier = Outlier(
        o.integer("consecutive_failures", default.consecutive_failures, minimum=0),
        o.duration("ejection", default.ejection),
        o.duration("max_ejection", default.max_ejection),
    )
    return GrpcTarget(
        name=name, address=address, tls=tls, pool=pool, outlier=outlier,
        forward_authorization=s.boolean("forward_authorization", False), **policy,
    )


def _http_target(s: Section, name: str, policy: dict[str, Any]) -> HttpTarget:
    base_url = s.required_string("base_url")
    if base_url and not base_url.startswith(("http://", "https://")):
        s.fail("base_url", "must start with http:// or https://")
    p = s.section("pool", ("max_connections", "max_per_host", "keepalive", "dns_ttl"))
    base = HttpPool()
    pool = HttpPool(
        max_connections=p.integer("max_connections", base.max_connections, minimum=1),
        max_per_host=p.integer("max_per_host", base.max_per_host, minimum=1),
        keepalive=p.duration("keepalive", base.keepalive),
        dns_ttl=p.duration("dns_ttl", base.dns_ttl),
    )
    health = None
    if s.has("health"):
        h = s.section("health", ("path", "interval", "timeout"))
        health = HttpHealth(
            h.string("path", "/health"), h.duration("interval", 10.0), h.duration("timeout", 2.0)
        )
    return HttpTarget(
        name=name, base_url=base_url, unix_socket=s.optional_string("unix_socket"),
        headers=tuple(s.string_map("headers").items()), pool=pool, tls=_tls(s),
        forward_authorization=s.boolean("forward_authorization", False), health=health,
        max_body=s.size("max_body", DEFAULT_MAX_BODY), **policy,
    )


def _kafka_target(s: Section, name: str, policy: dict[str, Any]) -> KafkaTarget:
    servers = s.string_list("bootstrap_servers")
    if not servers:
        s.fail("bootstrap_servers", "must list at least one host:port")
    topics = s.string_list("topics") if s.has("topics") else ("*",)
    if not topics:
        s.fail("topics", "must allow at least one topic (a glob like orders.*)")
    p = s.section(
        "producer", ("acks", "idempotence", "linger", "compression", "delivery_timeout", "config")
    )
    base = Producer()
    producer = Producer(
        acks=p.string("acks", base.acks, choices=_KAFKA_ACKS),
        idempotence=p.boolean("idempotence", base.idempotence),
        linger=p.duration("linger", base.linger, allow_zero=True),
        compression=p.string("compression", base.compression, choices=_COMPRESSION),
        delivery_timeout=p.duration("delivery_timeout", base.delivery_timeout),
        config=tuple(p.string_map("config").items()),
    )
    return KafkaTarget(
        name=name, bootstrap_servers=servers, topics=topics,
        topic_patterns=tuple(glob_pattern(t) for t in topics), producer=producer,
        max_message_bytes=s.size("max_message_bytes", 1024 * 1024), spool=_spool(s),
        **policy,
    )


def _spool(target: Section) -> Spool | None:
    """`spool`, off when absent; its directory must be one the daemon can write."""
    if not target.has("spool"):
        return None
    s = target.section("spool", ("dir", "max_bytes", "retention"))
    directory = s.required_string("dir")
    base = Spool(directory)
    spool = Spool(directory, s.size("max_bytes", base.max_bytes),
                  s.duration("retention", base.retention))
    if directory:
        if not os.path.isabs(directory):
            s.fail("dir", "must be an absolute path")
        else:
            reason = spool_dir_problem(directory)
            if reason is not None:
                s.fail("dir", reason)
    return spool


def spool_dir_problem(directory: str) -> str | None:
    """Why the daemon could not keep a spool in `directory` (created at start if missing),
    tried with a real file rather than permission bits (root passes those)."""
    probe = directory
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return f"cannot be written: {probe} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".sidecar-spool-probe-"):
            pass
    except OSError as e:
        return f"cannot be written: {e.strerror or e}"
    return None


_READERS = {"grpc": _grpc_target, "http": _http_target, "kafka": _kafka_target}


def _tls(target: Section) -> Tls | None:
    if not target.has("tls"):
        return None
    s = target.section(
        "tls", ("ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify")
    )
    tls = Tls(
        ca_file=s.existing_file("ca_file"),
        cert_file=s.existing_file("cert_file"),
        key_file=s.existing_file("key_file"),
        server_name=s.optional_string("server_name"),
        insecure_skip_verify=s.boolean("insecure_skip_verify", False),
    )
    if (tls.cert_file is None) != (tls.key_file is None):
        missing = "key_file" if tls.key_file is None else "cert_file"
        s.fail(missing, "cert_file and key_file go together")
    elif all(f is None or os.path.isfile(f) for f in (tls.ca_file, tls.cert_file, tls.key_file)):
        _check_tls_material(s, tls)
    return tls


def _check_tls_material(s: Section, tls: Tls) -> None:
    """Load the files as a TLS client would, so a bad file is a config problem, not a
    failure at start or reload."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (ssl.SSLError, OSError, ValueError) as e:
            s.fail("ca_file", f"not a usable PEM CA bundle: {_tls_reason(e)}")
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError, ValueError) as e:
            s.fail("cert_file", f"certificate and key do not load as a PEM pair: {_tls_reason(e)}")


def _tls_reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        if e.reason is None:  # OpenSSL's "PEM lib": unreadable, or a key of another cert
            return "not PEM, or the key does not belong to the certificate"
        return str(e.reason).lower().replace("_", " ")
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)


def _listeners(top: Section, targets: Mapping[str, Target]) -> tuple[Listener, ...]:
    entries = top.items("listeners")
    if not entries and top.raw.get("listeners") in (None, []):
        top.fail("listeners", "at least one listener is required")
    listeners: list[Listener] = []
    names: set[str] = set()
    sockets: set[str] = set()
    for path, raw in entries:
        s = Section(top.problems, raw, path, LISTENER_KEYS)
        listener = _listener(s, targets)
        if listener.name in names:
            s.fail("name", f"duplicate listener name {listener.name!r}")
        if listener.socket in sockets:
            s.fail("socket", f"socket {listener.socket} is used by another listener")
        names.add(listener.name)
        sockets.add(listener.socket)
        listeners.append(listener)
    return tuple(listeners)


def _listener(s: Section, targets: Mapping[str, Target]) -> Listener:
    name = s.required_string("name")
    socket = s.required_string("socket")
    if socket and not os.path.isabs(socket):
        s.fail("socket", "must be an absolute path")
    elif (size := len(os.fsencode(socket))) > MAX_SOCKET_PATH:
        s.fail("socket", f"path is {size} bytes, over the {MAX_SOCKET_PATH}-byte Unix socket limit")
    identity = _identity(s.section("identity", IDENTITY_KEYS))
    allowed = s.string_list("targets") if s.has("targets") else None
    default_target = s.optional_string("default_target")
    if default_target is not None:
        _check_grpc_target(s, "default_target", default_target, targets, allowed)
    routes = []
    for path, raw in s.items("routes"):
        r = Section(s.problems, raw, path, ("service", "target"))
        service, target = r.required_string("service"), r.required_string("target")
        if target:
            _check_grpc_target(r, "target", target, targets, allowed,
                               s.key_path("targets"))
        routes.append(Route(service, target, glob_pattern(service)))
    base = Listener(name, socket)
    if s.raw.get("engine") == "grpcio":
        s.fail("engine", "grpcio is no longer available: every listener runs the daemon's own "
                         "HTTP/2 engine (frames); remove the key")
    return Listener(
        name=name, socket=socket, mode=_mode(s), identity=identity,
        default_target=default_target, routes=tuple(routes), targets=allowed,
        rate_limit=_rate_limit(s) if s.has("rate_limit") else None,
        engine=s.string("engine", base.engine, choices=(*ENGINES, "grpcio")),
        idle_timeout=s.duration("idle_timeout", base.idle_timeout),
        max_connections=s.integer("max_connections", base.max_connections, minimum=1),
        max_request_buffer=s.size("max_request_buffer", base.max_request_buffer),
    )


def _identity(i: Section) -> Identity:
    peers = []
    for path, raw in i.items("peers"):
        p = Section(i.problems, raw, path, ("uid", "gid", "user_id"))
        user_id = p.required_string("user_id")
        if user_id and not _METADATA_VALUE.fullmatch(user_id):
            p.fail("user_id", "must be printable ASCII (it is sent as metadata and headers)")
        if p.has("uid") == p.has("gid"):
            i.problems.add(path, "give exactly one of uid or gid (with user_id)")
        peers.append(PeerRule(
            user_id=user_id,
            uid=p.integer("uid", 0, minimum=0) if p.has("uid") else None,
            gid=p.integer("gid", 0, minimum=0) if p.has("gid") else None,
        ))
    return Identity(
        user_id=i.optional_string("user_id"),
        trust_caller=i.boolean("trust_caller", True),
        require_user=i.boolean("require_user", False),
        peers=tuple(peers),
        unknown_peer=i.string("unknown_peer", "reject" if peers else "allow",
                              choices=UNKNOWN_PEER),
    )


def _rate_limit(s: Section) -> RateLimit:
    r = s.section("rate_limit", ("rate", "burst", "per"))
    value = r.raw.get("rate")
    match = _RATE.match(value) if isinstance(value, str) else None
    rate = 1.0
    if value is None:
        r.fail("rate", "is required (calls per time, like 100/s)")
    elif match is None:
        shown = r.problems.show(r.key_path("rate"), value)
        r.fail("rate", f"must be calls per time, like 100/s, 6000/m or 5/250ms, got {shown}")
    else:
        per = float(match.group(2) or 1) * _RATE_UNITS[match.group(3)]
        if float(match.group(1)) <= 0 or per <= 0:
            r.fail("rate", "must be > 0")
        else:
            rate = float(match.group(1)) / per
    return RateLimit(
        rate=rate,
        burst=r.integer("burst", max(1, math.ceil(rate)), minimum=1),
        per=r.string("per", "listener", choices=RATE_LIMIT_PER),
    )


def _check_grpc_target(
    s: Section, key: str, name: str, targets: Mapping[str, Target],
    allowed: tuple[str, ...] | None = None, allowed_key: str | None = None,
) -> None:
    target = targets.get(name)
    shown = s.problems.show(s.key_path(key), name)
    if target is None:
        s.fail(key, f"no target named {shown}")
    elif not isinstance(target, GrpcTarget):
        s.fail(key, f"target {shown} is {target.kind}, routes need a grpc target")
    elif allowed is not None and not any(glob_pattern(g).match(name) for g in allowed):
        s.fail(key, f"target {shown} is not in {allowed_key or s.key_path('targets')}, "
                    "the listener's allow-list")


def _mode(s: Section) -> int:
    value = s.raw.get("mode")
    if value is None:
        return 0o660
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        return int(value, 8)
    # An unquoted YAML number is ambiguous (0660 is octal, 660 decimal): refuse it.
    shown = s.problems.show(s.key_path("mode"), value)
    s.fail("mode", f'must be quoted octal permissions like "0660", got {shown}')
    return 0o660


def _admin(top: Section) -> Admin:
    if "admin" in top.raw and top.raw["admin"] is None:
        return Admin(host=None, port=None)
    s = top.section("admin", ("address",))
    if "address" in s.raw and s.raw["address"] is None:
        return Admin(host=None, port=None)
    address = s.string("address", "127.0.0.1:9901")
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not os.path.isabs(path):
            s.fail("address", "unix: address must hold an absolute path")
        return Admin(host=None, port=None, unix_path=path)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        shown = s.problems.show(s.key_path("address"), address)
        s.fail("address", f"must be host:port or unix:/path, got {shown}")
        return Admin()
    return Admin(host=host.strip("[]"), port=int(port))


def _reload(s: Section) -> Reload:
    base = Reload()
    return Reload(watch=s.boolean("watch", base.watch),
                  debounce=s.duration("debounce", base.debounce, allow_zero=True))


def _log(s: Section) -> Log:
    if isinstance(s.raw.get("level"), str):
        s.raw["level"] = s.raw["level"].lower()
    level = s.string("level", "info", choices=LOG_LEVELS)
    return Log(level=level, access=s.boolean("access", True))


def _telemetry(s: Section) -> Telemetry:
    t = s.section("tracing", ("otlp_endpoint", "sample_ratio"))
    m = s.section("metrics", ("enabled",))
    return Telemetry(
        tracing=Tracing(
            otlp_endpoint=t.optional_string("otlp_endpoint"),
            sample_ratio=t.number("sample_ratio", 1.0, maximum=1.0),
        ),
        metrics=MetricsConfig(enabled=m.boolean("enabled", True)),
    )
