"""The JSON Schema (draft 2020-12) of the YAML config, for editors and CI.

Built from the model, not written out: each dataclass of `config.py` is an
object whose properties are its fields, typed from their type hints, with the
loader's own enums and patterns (`config_loader`, `config_values`). What the
file says differently from the model is the short explicit map below: which
numbers are durations or sizes, their minimums, the few keys the loader reads
in a form of its own (`admin.address`, `mode`, `rate`, `retry.on`), and which
keys are required. A field the map does not place (a new float: duration or
number?) stops the build, and tests/test_config_schema.py checks every key,
type, enum and required key against what the loader accepts and refuses.

`${VAR}` is substituted in every string before anything is read, so a string
holding a reference is accepted wherever a number, boolean, duration, size or
choice is.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

from sidecar import config as model
from sidecar import config_loader as loader
from sidecar import config_values as values

Field = tuple[type, str]

# Model fields that are not keys of the file (derived, or where the file came from).
_DERIVED: set[Field] = {
    (model.Config, "source"), (model.Config, "secrets"), (model.Target, "name"),
    (model.Route, "pattern"), (model.KafkaTarget, "topic_patterns"),
}
# Floats that the file writes as durations; those that may be zero.
_DURATIONS: set[Field] = {
    (model.Config, "drain_timeout"), (model.Reload, "debounce"),
    (model.Listener, "idle_timeout"), (model.Backoff, "base"), (model.Backoff, "max"),
    (model.Budget, "window"), (model.Retry, "per_try_timeout"), (model.Breaker, "reset"),
    (model.Defaults, "timeout"), (model.Target, "timeout"), (model.GrpcPool, "keepalive"),
    (model.GrpcPool, "keepalive_timeout"), (model.GrpcPool, "dns_ttl"),
    (model.Outlier, "ejection"), (model.Outlier, "max_ejection"),
    (model.HttpPool, "keepalive"), (model.HttpPool, "dns_ttl"),
    (model.HttpHealth, "interval"), (model.HttpHealth, "timeout"),
    (model.Producer, "linger"), (model.Producer, "delivery_timeout"),
    (model.Spool, "retention"),
}
_ZERO_DURATIONS: set[Field] = {
    (model.Config, "drain_timeout"), (model.Reload, "debounce"), (model.Producer, "linger"),
}
# Integers the file may write as sizes (`16MiB`).
_SIZES: set[Field] = {
    (model.Limits, "max_message"), (model.HttpTarget, "max_body"),
    (model.KafkaTarget, "max_message_bytes"), (model.Spool, "max_bytes"),
    (model.Listener, "max_request_buffer"),
}
# The bounds the loader checks on plain integers and numbers: (minimum, maximum).
_BOUNDS: dict[Field, tuple[float, float | None]] = {
    (model.Retry, "attempts"): (1, None), (model.Breaker, "failures"): (1, None),
    (model.Limits, "max_in_flight"): (1, None), (model.GrpcPool, "connections"): (1, None),
    (model.HttpPool, "max_connections"): (1, None), (model.HttpPool, "max_per_host"): (1, None),
    (model.Outlier, "consecutive_failures"): (0, None), (model.RateLimit, "burst"): (1, None),
    (model.PeerRule, "uid"): (0, None), (model.PeerRule, "gid"): (0, None),
    (model.Listener, "max_connections"): (1, None),
    (model.Budget, "ratio"): (0, None), (model.Budget, "min_per_second"): (0, None),
    (model.Tracing, "sample_ratio"): (0, 1),
}
# Text keys with a fixed set of values (the loader's own tuples).
_CHOICES: dict[Field, tuple[str, ...]] = {
    (model.Log, "level"): model.LOG_LEVELS, (model.Identity, "unknown_peer"): model.UNKNOWN_PEER,
    (model.RateLimit, "per"): model.RATE_LIMIT_PER, (model.Listener, "engine"): loader.ENGINES,
    (model.Producer, "acks"): loader._KAFKA_ACKS,
    (model.Producer, "compression"): loader._COMPRESSION,
}
# Choices the loader compares in lower case.
_ANY_CASE: set[Field] = {(model.Log, "level")}
# Text keys the loader matches against a pattern of its own.
_PATTERNS: dict[Field, str] = {
    (model.GrpcTarget, "address"): loader._GRPC_ADDRESS.pattern,
    (model.HttpTarget, "base_url"): r"^https?://",
    (model.Listener, "socket"): r"^/", (model.Spool, "dir"): r"^/",
}
_REQUIRED: set[Field] = {
    (model.Config, "listeners"), (model.Listener, "name"), (model.Listener, "socket"),
    (model.PeerRule, "user_id"), (model.Route, "service"), (model.Route, "target"),
    (model.RateLimit, "rate"), (model.GrpcTarget, "address"), (model.HttpTarget, "base_url"),
    (model.KafkaTarget, "bootstrap_servers"), (model.Spool, "dir"),
}
# Keys of which exactly one is given, and keys given together or not at all.
_ONE_OF_KEYS: dict[type, tuple[str, ...]] = {model.PeerRule: ("uid", "gid")}
_TOGETHER: dict[type, tuple[str, ...]] = {model.Tls: ("cert_file", "key_file")}

_ENV = r"(^|[^$])\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
_DEFS: dict[str, Any] = {
    "env": {
        "type": "string", "pattern": _ENV,
        "description": "${VAR} or ${VAR:-default}: read from the environment as this key's type",
    },
    "duration": {
        "type": "string", "pattern": r"^(?!0+(\.0+)?(us|ms|s|m|h)$)" + values._DURATION.pattern[1:],
        "description": "a duration with a unit, over zero: 250ms, 5s, 2m, 1h (also us)",
    },
    "duration_or_zero": {
        "type": "string", "pattern": values._DURATION.pattern,
        "description": "a duration with a unit: 0s, 250ms, 5s, 2m, 1h (also us)",
    },
    "size": {
        "anyOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": r"^(?!0+\s*[A-Za-z]*$)" + values._SIZE.pattern[1:]},
        ],
        "description": "a size over zero: bytes, or 512KiB, 16MiB, 1GiB (also B, KB, MB, GB)",
    },
}

_DESCRIPTIONS: dict[Field, str] = {
    (model.Config, "listeners"): "Unix-socket gRPC servers the applications connect to",
    (model.Config, "targets"): "upstreams by name: grpc, http or kafka",
    (model.Config, "admin"): "admin HTTP endpoint; null turns it off",
    (model.Config, "drain_timeout"): "on SIGTERM, how long in-flight calls may finish",
    (model.Config, "reload"): "config reloads (SIGHUP always)",
    (model.Config, "log"): "JSON log lines on stderr",
    (model.Config, "telemetry"): "traces and metrics",
    (model.Config, "defaults"): "the policy every target inherits, and may override",
    (model.Admin, "address"): "host:port or unix:/path; null turns the endpoint off",
    (model.Reload, "watch"): "also reload when the config file changes",
    (model.Reload, "debounce"): "quiet time after a change before the file is read",
    (model.Log, "level"): "debug, info, warning or error",
    (model.Log, "access"): "one `call` log line per proxied call",
    (model.Telemetry, "tracing"): "OpenTelemetry traces",
    (model.Telemetry, "metrics"): "per-call metrics on the admin endpoint's /metrics",
    (model.Tracing, "otlp_endpoint"): "OTLP/gRPC collector for traces; null: tracing off",
    (model.Tracing, "sample_ratio"): "share of new traces sampled, 0 to 1",
    (model.MetricsConfig, "enabled"): "per-call metrics; false saves their cost",
    (model.Listener, "name"): "unique name, shown in logs and /status",
    (model.Listener, "socket"): "absolute path of the socket, at most 107 bytes",
    (model.Listener, "mode"): 'socket file permissions, quoted octal ("0660")',
    (model.Listener, "identity"): "the user id calls on this socket carry",
    (model.Listener, "default_target"): "grpc target for proxied calls no route matches",
    (model.Listener, "routes"): "gRPC services to targets, first match wins",
    (model.Listener, "targets"): "allow-list of target names or globs; absent: every target",
    (model.Listener, "rate_limit"): "calls per time for this socket, or for each caller",
    (model.Listener, "engine"): "the daemon's own HTTP/2 engine, the only one",
    (model.Listener, "idle_timeout"): "a caller connection without streams this long is closed",
    (model.Listener, "max_connections"): "caller connections open at once on this socket",
    (model.Listener, "max_request_buffer"): "bytes of HttpProxy/Publisher requests not yet "
                                            "complete held at once; past it RESOURCE_EXHAUSTED",
    (model.Identity, "user_id"): "user id injected into every call on this socket",
    (model.Identity, "trust_caller"): "take the caller's x-user-id/user-id",
    (model.Identity, "require_user"): "refuse calls without a user id (UNAUTHENTICATED)",
    (model.Identity, "peers"): "user ids of connecting processes by uid or gid, first match wins",
    (model.Identity, "unknown_peer"): "a peer no rule matches: reject (default with peers) "
                                      "or allow",
    (model.PeerRule, "uid"): "a connecting process with this uid (give uid or gid)",
    (model.PeerRule, "gid"): "a connecting process with this primary gid (give uid or gid)",
    (model.PeerRule, "user_id"): "the call's user id for a matching peer (printable ASCII)",
    (model.Route, "service"): "full gRPC service name, glob allowed (backtest.v1.*)",
    (model.Route, "target"): "grpc target the matching calls go to",
    (model.RateLimit, "rate"): "calls per time: 100/s, 6000/m, 5/250ms",
    (model.RateLimit, "burst"): "calls that may come at once after a quiet spell",
    (model.RateLimit, "per"): "listener: one bucket for the socket; caller: one per caller",
    (model.Defaults, "timeout"): "upstream deadline when the caller sets none",
    (model.Defaults, "retry"): "retries, their backoff and budget",
    (model.Defaults, "breaker"): "circuit breaker",
    (model.Defaults, "limits"): "concurrency and message size limits",
    (model.Retry, "attempts"): "total tries, the first included; 1 turns retries off",
    (model.Retry, "backoff"): "exponential backoff with full jitter",
    (model.Retry, "budget"): "retries may add at most ratio of recent requests",
    (model.Retry, "on"): "extra gRPC code names or HTTP 5xx statuses to retry",
    (model.Retry, "per_try_timeout"): "deadline of each attempt",
    (model.Retry, "non_idempotent"): "HTTP: retry POST and PATCH too",
    (model.Backoff, "base"): "first backoff; it doubles per retry",
    (model.Backoff, "max"): "backoff ceiling (at least base)",
    (model.Budget, "ratio"): "share of the window's requests retries may add",
    (model.Budget, "min_per_second"): "plus this many retries per second",
    (model.Budget, "window"): "what recent requests means for the budget",
    (model.Breaker, "failures"): "consecutive upstream faults that open the circuit",
    (model.Breaker, "reset"): "how long the circuit stays open before a trial call",
    (model.Limits, "max_in_flight"): "concurrent calls per target",
    (model.Limits, "max_message"): "largest gRPC message either way",
    (model.Target, "timeout"): "upstream deadline when the caller sets none",
    (model.Target, "retry"): "retries, their backoff and budget (overrides defaults.retry)",
    (model.Target, "breaker"): "circuit breaker (overrides defaults.breaker)",
    (model.Target, "limits"): "concurrency and message size limits (overrides defaults.limits)",
    (model.Target, "required"): "/readyz answers 503 while this target is unhealthy",
    (model.Target, "metadata"): "names the identity metadata is sent under",
    (model.MetadataNames, "user_id"): "name the user id is sent under",
    (model.MetadataNames, "correlation_id"): "name the correlation id is sent under",
    (model.MetadataNames, "request_id"): "name the per-call request id is sent under",
    (model.MetadataNames, "caller_uid"): "name the caller's uid is sent under; not sent unless "
                                         "named",
    (model.GrpcTarget, "address"): "unix:///path, unix-abstract:name, dns:///host:port, "
                                   "host:port, ipv4:... or ipv6:...",
    (model.GrpcTarget, "tls"): "TLS to the upstream (mTLS with cert_file and key_file)",
    (model.GrpcTarget, "forward_authorization"): "forward the caller's authorization metadata",
    (model.GrpcTarget, "pool"): "HTTP/2 connections to the upstream",
    (model.GrpcTarget, "outlier"): "ejecting endpoints after connect failures",
    (model.GrpcPool, "connections"): "HTTP/2 connections per endpoint",
    (model.GrpcPool, "keepalive"): "a keepalive PING after this long without a byte",
    (model.GrpcPool, "keepalive_timeout"): "an unanswered PING closes the connection after this",
    (model.GrpcPool, "dns_ttl"): "a dns name is resolved again after this",
    (model.GrpcPool, "reconnect"): "wait between connects to a failing endpoint",
    (model.Outlier, "consecutive_failures"): "connect failures in a row that eject an endpoint;"
                                             " 0 never ejects",
    (model.Outlier, "ejection"): "how long an ejection lasts, times the ejections in a row",
    (model.Outlier, "max_ejection"): "longest ejection",
    (model.HttpTarget, "base_url"): "http://host:port or https://...; the call's path is "
                                    "joined to it",
    (model.HttpTarget, "unix_socket"): "reach the server over this Unix socket instead",
    (model.HttpTarget, "headers"): "static headers added to every request (${VAR} for secrets)",
    (model.HttpTarget, "pool"): "HTTP/1.1 connection pool",
    (model.HttpTarget, "tls"): "TLS settings for https://",
    (model.HttpTarget, "forward_authorization"): "forward the caller's authorization as "
                                                 "Authorization",
    (model.HttpTarget, "health"): "active health check; runs only if set",
    (model.HttpTarget, "max_body"): "largest request or response body",
    (model.HttpPool, "max_connections"): "connections in the pool",
    (model.HttpPool, "max_per_host"): "connections per host",
    (model.HttpPool, "keepalive"): "idle connection life",
    (model.HttpPool, "dns_ttl"): "DNS cache time",
    (model.HttpHealth, "path"): "health check path",
    (model.HttpHealth, "interval"): "time between checks",
    (model.HttpHealth, "timeout"): "a check slower than this fails",
    (model.Tls, "ca_file"): "roots to verify the server with (system roots when null)",
    (model.Tls, "cert_file"): "client certificate: with key_file, mutual TLS",
    (model.Tls, "key_file"): "client key, goes with cert_file",
    (model.Tls, "server_name"): "name to verify instead of the address's host",
    (model.Tls, "insecure_skip_verify"): "http only: turn certificate checks off",
    (model.KafkaTarget, "bootstrap_servers"): "list of host:port",
    (model.KafkaTarget, "topics"): "topics callers may publish to, globs",
    (model.KafkaTarget, "producer"): "the librdkafka producer",
    (model.KafkaTarget, "max_message_bytes"): "largest message accepted",
    (model.KafkaTarget, "spool"): "keep messages on disk while the brokers are away; "
                                  "absent: no spool",
    (model.Producer, "acks"): "all, 1 or 0 (-1 is all)",
    (model.Producer, "idempotence"): "idempotent producer: retries cannot duplicate",
    (model.Producer, "linger"): "batching delay",
    (model.Producer, "compression"): "none, gzip, snappy, lz4 or zstd",
    (model.Producer, "delivery_timeout"): "give up on a message after this",
    (model.Producer, "config"): "extra librdkafka settings (${VAR} for secrets)",
    (model.Spool, "dir"): "absolute path of the target's spool",
    (model.Spool, "max_bytes"): "bytes of waiting messages the spool holds",
    (model.Spool, "retention"): "how long the status of a delivered or failed message is kept",
}
_KIND_DESCRIPTION = "grpc, http or kafka"
_TARGET_KINDS: tuple[type[model.Target], ...] = (
    model.GrpcTarget, model.HttpTarget, model.KafkaTarget,
)


def config_schema() -> dict[str, Any]:
    """The schema, as a JSON-ready dict."""
    defs = dict(_DEFS)
    root = _object(model.Config, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sidecar config",
        "description": "The YAML config of the sidecar daemon (docs/configuration.md); "
                       "`sidecar config-schema` prints this schema.",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def _declared(cls: type, name: str, table: Mapping[Field, Any] | set[Field]) -> Field | None:
    """(the class that declares `name`, `name`) when it is in `table`, else None."""
    return next(((base, name) for base in cls.__mro__ if (base, name) in table), None)


def _object(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = get_type_hints(cls, vars(model))
    properties: dict[str, Any] = {}
    required: list[str] = []
    if issubclass(cls, model.Target):
        properties["kind"] = {"const": cls.kind, "description": _KIND_DESCRIPTION}
        required.append("kind")
    for f in dataclasses.fields(cls):
        if not f.init or _declared(cls, f.name, _DERIVED):
            continue
        described = _declared(cls, f.name, _DESCRIPTIONS)
        if described is None:
            raise LookupError(f"{cls.__name__}.{f.name}: no description in config_schema")
        key, schema = _field(cls, f.name, hints[f.name], defs)
        if _declared(cls, f.name, _REQUIRED):
            required.append(key)
        else:  # the loader reads null as the key left out (`timeout:` with no value)
            schema = _nullable(schema)
        properties[key] = {**schema, "description": _DESCRIPTIONS[described]}
    out: dict[str, Any] = {"type": "object", "properties": properties,
                           "additionalProperties": False}
    if required:
        out["required"] = required
    if cls in _ONE_OF_KEYS:
        out["oneOf"] = [{"required": [key]} for key in _ONE_OF_KEYS[cls]]
    if cls in _TOGETHER:
        keys = _TOGETHER[cls]
        out["dependentRequired"] = {key: [k for k in keys if k != key] for key in keys}
    return out


def _ref(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    """A `$ref` to the object schema of `cls`, defined once in `$defs`."""
    name = "".join(("_" + c.lower()) if c.isupper() else c for c in cls.__name__).lstrip("_")
    if name not in defs:
        defs[name] = {}  # placeholder while its own fields are built
        defs[name] = _object(cls, defs)
    return {"$ref": f"#/$defs/{name}"}


def _typed(schema: dict[str, Any]) -> dict[str, Any]:
    """A value of a typed key, or a `${VAR}` the loader reads as that type."""
    return {"anyOf": [schema, {"$ref": "#/$defs/env"}]}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    if isinstance(schema.get("type"), list):
        return {**schema, "type": [*schema["type"], "null"]}
    return {"anyOf": [*schema.get("anyOf", [schema]), {"type": "null"}]}


def _field(cls: type, name: str, hint: Any, defs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The file's key for a model field and its schema."""
    if cls is model.Config and name == "admin":
        address = {"anyOf": [{"type": "string", "pattern": r"^(unix:/.*|.+:\d+)$"},
                             {"$ref": "#/$defs/env"}]}
        return name, {"type": "object", "additionalProperties": False, "properties": {
            "address": {**_nullable(address),
                        "description": _DESCRIPTIONS[(model.Admin, "address")]}}}
    if cls is model.Config and name == "targets":
        union = {"oneOf": [_ref(kind, defs) for kind in _TARGET_KINDS]}
        return name, {"type": "object", "additionalProperties": union}
    if cls is model.Listener and name == "mode":
        return name, _typed({"type": "string", "pattern": r"^0?[0-7]{3}$"})
    if cls is model.RateLimit and name == "rate":
        return name, _typed({"type": "string", "pattern": loader._RATE.pattern})
    if cls is model.Retry and name == "on":
        codes = sorted(c for c in model.GRPC_CODES if c != "OK")
        item = {"anyOf": [{"enum": [*codes, *(c.lower() for c in codes)]},
                          {"type": "integer", "minimum": 500, "maximum": 599},
                          {"$ref": "#/$defs/env"}]}
        return name, {"type": "array", "items": item}
    if get_origin(hint) in (Union, types.UnionType):  # `X | None`: null is the key left out
        (hint,) = (a for a in get_args(hint) if a is not type(None))
    return name, _value(cls, name, hint, defs)


def _value(cls: type, name: str, hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if dataclasses.is_dataclass(hint):
        return _ref(hint, defs)  # type: ignore[arg-type]
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        at_least = {"minItems": 1} if _declared(cls, name, _REQUIRED) else {}
        if dataclasses.is_dataclass(item):
            return {"type": "array", "items": _ref(item, defs), **at_least}  # type: ignore[arg-type]
        if get_origin(item) is tuple:  # name-value pairs: a mapping in the file
            return {"type": "object", "additionalProperties": {"type": ["string", "number"]}}
        return {"type": "array", "items": {"type": "string", "minLength": 1}, **at_least}
    if hint is bool:
        return _typed({"type": "boolean"})
    if hint is int and _declared(cls, name, _SIZES):
        return _typed({"$ref": "#/$defs/size"})
    if hint is float and _declared(cls, name, _DURATIONS):
        zero = _declared(cls, name, _ZERO_DURATIONS)
        return _typed({"$ref": "#/$defs/duration_or_zero" if zero else "#/$defs/duration"})
    if hint in (int, float):
        bounds = _declared(cls, name, _BOUNDS)
        if bounds is None:
            raise LookupError(f"{cls.__name__}.{name}: a duration, a size or bounds? "
                              "(config_schema)")
        low, high = _BOUNDS[bounds]
        number: dict[str, Any] = {"type": "integer" if hint is int else "number",
                                  "minimum": low}
        if high is not None:
            number["maximum"] = high
        return _typed(number)
    if hint is str:
        choices = _declared(cls, name, _CHOICES)
        if choices is not None:
            options: list[Any] = list(_CHOICES[choices])
            if _declared(cls, name, _ANY_CASE):
                options += [o.upper() for o in options]
            options += [int(o) for o in options if o.lstrip("-").isdigit()]  # YAML's `acks: 1`
            return _typed({"enum": options})
        pattern = _declared(cls, name, _PATTERNS)
        if pattern is not None:
            return _typed({"type": "string", "pattern": _PATTERNS[pattern]})
        # The loader takes a YAML number for text too (`user_id: 1001` is "1001").
        text: dict[str, Any] = {"type": ["string", "number"]}
        if _declared(cls, name, _REQUIRED):
            text["minLength"] = 1
        return text
    raise LookupError(f"{cls.__name__}.{name}: no schema for {hint!r} (config_schema)")
