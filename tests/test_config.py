"""Config loading and validation: typed values, inheritance, and every problem by key path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from sidecar.config import GrpcTarget, HttpTarget, KafkaTarget
from sidecar.config_loader import load_config, parse_config
from sidecar.errors import ConfigError

DESIGN_EXAMPLE = """
listeners:
  - name: app
    socket: /run/sidecar/app.sock      # stale socket file replaced; a live one is an error
    mode: "0660"                       # socket file permissions
    identity: {user_id: null, trust_caller: true, require_user: false}
    default_target: orders
    routes:
      - {service: "backtest.v1.*", target: backtest}
admin: {address: 127.0.0.1:9901}
drain_timeout: 10s                     # SIGTERM: how long in-flight calls may finish
log: {level: info}                     # JSON lines on stderr
telemetry: {tracing: {otlp_endpoint: null, sample_ratio: 1.0}}
defaults:                              # every target inherits, and may override
  timeout: 5s                          # used when the caller sets no deadline
  retry:
    attempts: 3                        # total tries, first included
    backoff: {base: 25ms, max: 1s}     # exponential, full jitter
    budget: {ratio: 0.2, min_per_second: 10, window: 10s}
  breaker: {failures: 5, reset: 30s}
  limits: {max_in_flight: 1000, max_message: 16MiB}
targets:
  orders: {kind: grpc, address: "orders:50051"}
  backtest: {kind: grpc, address: "dns:///backtest:50051"}   # or unix:///path, host:port
  billing:
    kind: http
    base_url: http://billing:8080      # or unix_socket: /path with base_url http://localhost
    headers: {X-Api-Key: "${BILLING_API_KEY}"}                # ${VAR} from the environment
    pool: {max_connections: 100, max_per_host: 30, keepalive: 30s, dns_ttl: 300s}
  events:
    kind: kafka
    bootstrap_servers: ["kafka:9092"]
    topics: ["orders.*"]               # allowed topics, globs
    producer: {acks: all, idempotence: true, linger: 5ms, compression: zstd}
"""

SECRET = "s3cr3t-value"


def base_config(**top: Any) -> dict[str, Any]:
    """One listener `app` routing by default to the grpc target `up`, plus `top` keys."""
    raw: dict[str, Any] = {
        "listeners": [{"name": "app", "socket": "/run/sidecar/app.sock", "default_target": "up"}],
        "targets": {"up": {"kind": "grpc", "address": "up:50051"}},
    }
    raw.update(top)
    return raw


def with_target(name: str, body: dict[str, Any], **top: Any) -> dict[str, Any]:
    raw = base_config(**top)
    raw["targets"][name] = body
    return raw


def with_listener(**fields: Any) -> dict[str, Any]:
    raw = base_config()
    raw["listeners"][0].update(fields)
    return raw


def problems_of(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    assert isinstance(info.value.problems, list)
    return info.value.problems


def assert_one_problem(problems: list[str], path: str, *fragments: str) -> str:
    """Exactly one problem line for `path`, and it holds every fragment."""
    lines = [p for p in problems if p.startswith(f"{path}: ")]
    assert len(lines) == 1, problems
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- the documented example ------------------------------------------------


def test_design_example_parses_into_typed_values() -> None:
    config = parse_config(yaml.safe_load(DESIGN_EXAMPLE), env={"BILLING_API_KEY": "k-123"})

    (app,) = config.listeners
    assert app.name == "app"
    assert app.socket == "/run/sidecar/app.sock"
    assert app.mode == 0o660
    assert app.default_target == "orders"
    assert app.identity.user_id is None
    assert app.identity.trust_caller is True
    assert app.identity.require_user is False
    assert config.admin.host == "127.0.0.1"
    assert config.admin.port == 9901
    assert config.admin.enabled
    assert config.drain_timeout == 10.0
    assert config.log.level == "info"
    assert config.telemetry.tracing.otlp_endpoint is None
    assert config.telemetry.tracing.sample_ratio == 1.0

    d = config.defaults
    assert d.timeout == 5.0
    assert d.retry.attempts == 3
    assert d.retry.backoff.base == pytest.approx(0.025)
    assert d.retry.backoff.max == 1.0
    assert (d.retry.budget.ratio, d.retry.budget.min_per_second) == (0.2, 10.0)
    assert d.retry.budget.window == 10.0
    assert (d.breaker.failures, d.breaker.reset) == (5, 30.0)
    assert d.limits.max_in_flight == 1000
    assert d.limits.max_message == 16 * 1024 * 1024

    assert set(config.targets) == {"orders", "backtest", "billing", "events"}
    backtest = config.targets["backtest"]
    assert isinstance(backtest, GrpcTarget)
    assert backtest.address == "dns:///backtest:50051"

    billing = config.targets["billing"]
    assert isinstance(billing, HttpTarget)
    assert billing.base_url == "http://billing:8080"
    assert dict(billing.headers) == {"X-Api-Key": "k-123"}
    assert billing.pool.max_connections == 100
    assert billing.pool.max_per_host == 30
    assert billing.pool.keepalive == 30.0
    assert billing.pool.dns_ttl == 300.0

    events = config.targets["events"]
    assert isinstance(events, KafkaTarget)
    assert events.bootstrap_servers == ("kafka:9092",)
    assert events.topics == ("orders.*",)
    assert events.producer.acks == "all"
    assert events.producer.idempotence is True
    assert events.producer.linger == pytest.approx(0.005)
    assert events.producer.compression == "zstd"
    assert any(p.fullmatch("orders.created") for p in events.topic_patterns)
    assert not any(p.fullmatch("payments.created") for p in events.topic_patterns)


def test_design_example_route_globs_are_compiled_and_match_services() -> None:
    config = parse_config(yaml.safe_load(DESIGN_EXAMPLE), env={"BILLING_API_KEY": "k"})
    (route,) = config.listeners[0].routes
    assert (route.service, route.target) == ("backtest.v1.*", "backtest")
    assert route.pattern.match("backtest.v1.Foo")
    assert not route.pattern.match("backtest.v2.Foo")
    assert not route.pattern.match("other.backtest.v1.Foo")


def test_design_example_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(DESIGN_EXAMPLE)
    config = load_config(str(path), env={"BILLING_API_KEY": "k"})
    assert config.source == str(path)
    assert len(config.listeners) == 1


def test_unquoted_mode_in_yaml_is_refused_as_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(DESIGN_EXAMPLE.replace('mode: "0660"', "mode: 0640"))
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={"BILLING_API_KEY": "k"})
    assert err.value.problems == [
        'listeners[0].mode: must be quoted octal permissions like "0660", got 416']


# ---- typed values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2m", 120.0), ("5s", 5.0), ("1.5s", 1.5), ("1h", 3600.0),
     ("500us", 0.0005)],
)
def test_durations_come_out_in_seconds(text: str, seconds: float) -> None:
    config = parse_config(base_config(defaults={"timeout": text}), env={})
    assert config.defaults.timeout == pytest.approx(seconds)
    assert config.targets["up"].timeout == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("16MiB", 16 * 1024**2), ("512KiB", 512 * 1024), ("1GiB", 1024**3), ("1MB", 10**6),
     (4096, 4096), ("4096", 4096)],
)
def test_sizes_come_out_in_bytes(text: str | int, size: int) -> None:
    config = parse_config(base_config(defaults={"limits": {"max_message": text}}), env={})
    assert config.defaults.limits.max_message == size


def test_zero_drain_timeout_is_allowed() -> None:
    assert parse_config(base_config(drain_timeout="0s"), env={}).drain_timeout == 0.0


def test_zero_timeout_is_refused() -> None:
    problems = problems_of(base_config(defaults={"timeout": "0s"}))
    assert_one_problem(problems, "defaults.timeout", "must be > 0")


def test_zero_size_is_refused() -> None:
    problems = problems_of(base_config(defaults={"limits": {"max_message": "0MiB"}}))
    assert_one_problem(problems, "defaults.limits.max_message", "must be > 0")


@pytest.mark.parametrize("text", ["16 M", "1.5MiB", "lots", "-1"])
def test_malformed_size_is_named_by_its_path(text: str) -> None:
    problems = problems_of(base_config(defaults={"limits": {"max_message": text}}))
    assert_one_problem(problems, "defaults.limits.max_message", "must be a size")


# ---- defaults and inheritance ----------------------------------------------


def test_builtin_defaults_apply_when_defaults_section_is_absent() -> None:
    config = parse_config(base_config(), env={})
    for policy in (config.defaults, config.targets["up"]):
        assert policy.timeout == 5.0
        assert policy.retry.attempts == 3
        assert policy.retry.budget.ratio == 0.2
        assert policy.breaker.failures == 5
        assert policy.breaker.reset == 30.0
        assert policy.limits.max_in_flight == 1000
        assert policy.limits.max_message == 16 * 1024 * 1024


def test_builtin_top_level_defaults_apply_when_keys_are_absent() -> None:
    config = parse_config(base_config(), env={})
    assert config.drain_timeout == 10.0
    assert config.log.level == "info"
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9901)
    assert config.listeners[0].mode == 0o660
    assert config.telemetry.tracing.sample_ratio == 1.0


CUSTOM_DEFAULTS = {
    "timeout": "2s",
    "retry": {
        "attempts": 5,
        "backoff": {"base": "10ms", "max": "2s"},
        "budget": {"ratio": 0.5, "min_per_second": 3, "window": "30s"},
        "on": ["resource_exhausted"],
    },
    "breaker": {"failures": 7},
    "limits": {"max_in_flight": 50},
}


def test_target_without_retry_inherits_defaults_retry() -> None:
    config = parse_config(base_config(defaults=CUSTOM_DEFAULTS), env={})
    up = config.targets["up"]
    assert up.timeout == 2.0
    assert up.retry == config.defaults.retry
    assert up.retry.attempts == 5
    assert up.retry.backoff.base == pytest.approx(0.01)
    assert up.retry.on == ("RESOURCE_EXHAUSTED",)
    assert up.breaker.failures == 7
    assert up.breaker.reset == 30.0  # built-in, not overridden in defaults
    assert up.limits.max_in_flight == 50


def test_target_overriding_one_retry_key_keeps_the_other_inherited_keys() -> None:
    raw = base_config(defaults=CUSTOM_DEFAULTS)
    raw["targets"]["up"]["retry"] = {"attempts": 2}
    raw["targets"]["up"]["breaker"] = {"reset": "1m"}
    up = parse_config(raw, env={}).targets["up"]
    assert up.retry.attempts == 2
    assert up.retry.backoff.base == pytest.approx(0.01)
    assert up.retry.backoff.max == 2.0
    assert up.retry.budget.ratio == 0.5
    assert up.retry.budget.min_per_second == 3.0
    assert up.retry.budget.window == 30.0
    assert up.retry.on == ("RESOURCE_EXHAUSTED",)
    assert (up.breaker.failures, up.breaker.reset) == (7, 60.0)


def test_target_overriding_one_backoff_key_keeps_the_other() -> None:
    raw = base_config(defaults=CUSTOM_DEFAULTS)
    raw["targets"]["up"]["retry"] = {"backoff": {"max": "5s"}}
    up = parse_config(raw, env={}).targets["up"]
    assert up.retry.backoff.base == pytest.approx(0.01)
    assert up.retry.backoff.max == 5.0
    assert up.retry.attempts == 5


def test_target_overrides_do_not_leak_into_other_targets() -> None:
    raw = base_config(defaults=CUSTOM_DEFAULTS)
    raw["targets"]["up"]["retry"] = {"attempts": 1}
    raw["targets"]["other"] = {"kind": "grpc", "address": "other:50051"}
    config = parse_config(raw, env={})
    assert config.targets["up"].retry.attempts == 1
    assert config.targets["other"].retry.attempts == 5
    assert config.defaults.retry.attempts == 5


def test_backoff_max_below_base_is_refused() -> None:
    raw = base_config(defaults={"retry": {"backoff": {"base": "2s", "max": "1s"}}})
    assert_one_problem(problems_of(raw), "defaults.retry.backoff.max", "backoff.base")


def test_metadata_names_default_per_kind_and_may_be_renamed() -> None:
    raw = with_target("billing", {"kind": "http", "base_url": "http://billing:8080"})
    raw["targets"]["up"]["metadata"] = {"user_id": "x-uid"}
    config = parse_config(raw, env={})
    assert config.targets["up"].metadata.user_id == "x-uid"
    assert config.targets["up"].metadata.correlation_id == "correlation-id"
    assert config.targets["billing"].metadata.request_id == "X-Request-Id"


# ---- all problems, by key path ---------------------------------------------


def test_every_problem_is_reported_together_each_with_its_path() -> None:
    raw = with_target(
        "billing",
        {"kind": "http", "base_url": "http://billing:8080",
         "pool": {"max_conections": 3, "max_connections": 0}},
        unknown=1, drain_timeout=5, log={"level": "verbose"},
    )
    problems = problems_of(raw)
    assert len(problems) == 5, problems
    assert_one_problem(problems, "unknown", "unknown key")
    assert_one_problem(problems, "targets.billing.pool.max_conections", "unknown key")
    assert_one_problem(problems, "targets.billing.pool.max_connections", "must be >= 1")
    assert_one_problem(problems, "drain_timeout", "unit")
    assert_one_problem(problems, "log.level", "verbose")


def test_unknown_top_level_key_is_reported_with_its_path() -> None:
    problems = problems_of(base_config(listener=[]))
    assert problems == [
        "listener: unknown key (known: admin, defaults, drain_timeout, listeners, log, reload, "
        "targets, telemetry)"
    ]


def test_unknown_nested_key_is_reported_with_its_path_and_known_keys() -> None:
    raw = with_target("billing", {"kind": "http", "base_url": "http://billing:8080",
                                  "pool": {"max_conections": 3}})
    line = assert_one_problem(problems_of(raw), "targets.billing.pool.max_conections",
                              "unknown key")
    assert "max_connections" in line


def test_key_belonging_to_another_target_kind_is_unknown() -> None:
    raw = base_config()
    raw["targets"]["up"]["base_url"] = "http://up"
    assert_one_problem(problems_of(raw), "targets.up.base_url", "unknown key")


def test_max_connections_below_one_is_named_by_its_path() -> None:
    raw = with_target("billing", {"kind": "http", "base_url": "http://billing:8080",
                                  "pool": {"max_connections": 0}})
    problems = problems_of(raw)
    assert problems == ["targets.billing.pool.max_connections: must be >= 1"]


@pytest.mark.parametrize(
    ("raw", "path", "expected"),
    [
        (with_target("b", {"kind": "http", "base_url": "http://b",
                           "pool": {"max_connections": "100"}}),
         "targets.b.pool.max_connections", "whole number"),
        (base_config(defaults={"retry": {"attempts": 2.5}}),
         "defaults.retry.attempts", "whole number"),
        (base_config(drain_timeout=10), "drain_timeout", "duration with a unit"),
        (base_config(defaults={"timeout": 5}), "defaults.timeout", "duration with a unit"),
        (with_listener(name=True), "listeners[0].name", "a string"),
        (base_config(targets={"up": {"kind": "grpc", "address": False}}),
         "targets.up.address", "a string"),
        (with_listener(identity={"trust_caller": "yes"}),
         "listeners[0].identity.trust_caller", "true or false"),
        (base_config(telemetry={"tracing": {"sample_ratio": "all"}}),
         "telemetry.tracing.sample_ratio", "a number"),
        (base_config(telemetry={"tracing": {"sample_ratio": 1.5}}),
         "telemetry.tracing.sample_ratio", "between"),
        (base_config(defaults={"retry": {"budget": {"ratio": -0.1}}}),
         "defaults.retry.budget.ratio", ">= 0"),
        (base_config(defaults={"breaker": "strict"}), "defaults.breaker", "mapping"),
        (base_config(listeners={"name": "app"}), "listeners", "a list"),
    ],
)
def test_value_of_wrong_type_is_named_by_its_path(
    raw: dict[str, Any], path: str, expected: str
) -> None:
    assert_one_problem(problems_of(raw), path, expected)


def test_duration_without_unit_says_a_unit_is_needed() -> None:
    line = assert_one_problem(problems_of(base_config(defaults={"timeout": 5})),
                              "defaults.timeout")
    assert "250ms" in line


# ---- ${VAR} substitution ----------------------------------------------------


def billing(headers: dict[str, str]) -> dict[str, Any]:
    return with_target("billing", {"kind": "http", "base_url": "http://billing:8080",
                                   "headers": headers})


def test_env_var_is_substituted_into_strings() -> None:
    raw = billing({"X-Api-Key": "Bearer ${KEY}", "X-Both": "${A}-${B}"})
    config = parse_config(raw, env={"KEY": "abc", "A": "1", "B": "2"})
    target = config.targets["billing"]
    assert isinstance(target, HttpTarget)
    assert dict(target.headers) == {"X-Api-Key": "Bearer abc", "X-Both": "1-2"}


def test_env_var_substitution_reaches_list_items_and_typed_values() -> None:
    raw = with_target("events", {"kind": "kafka", "bootstrap_servers": ["${BROKER}"]},
                      drain_timeout="${DRAIN}")
    config = parse_config(raw, env={"BROKER": "kafka:9092", "DRAIN": "3s"})
    events = config.targets["events"]
    assert isinstance(events, KafkaTarget)
    assert events.bootstrap_servers == ("kafka:9092",)
    assert config.drain_timeout == 3.0


def test_missing_env_var_is_named_with_the_key_path() -> None:
    problems = problems_of(billing({"X-Api-Key": "${BILLING_API_KEY}"}))
    assert_one_problem(problems, "targets.billing.headers.X-Api-Key", "BILLING_API_KEY",
                       "not set")


def test_missing_env_var_in_a_list_is_named_with_its_index() -> None:
    raw = with_target("events", {"kind": "kafka", "bootstrap_servers": ["k:9092", "${B2}"]})
    problems = problems_of(raw)
    assert any(p.startswith("targets.events.bootstrap_servers[1]: ") and "B2" in p
               for p in problems), problems


def test_env_default_is_used_when_var_is_unset() -> None:
    raw = billing({"X-Api-Key": "${KEY:-fallback}", "X-Empty": "${NONE:-}"})
    target = parse_config(raw, env={}).targets["billing"]
    assert isinstance(target, HttpTarget)
    assert dict(target.headers) == {"X-Api-Key": "fallback", "X-Empty": ""}


def test_env_value_beats_the_default_when_set() -> None:
    target = parse_config(billing({"X-Api-Key": "${KEY:-fallback}"}),
                          env={"KEY": "real"}).targets["billing"]
    assert isinstance(target, HttpTarget)
    assert dict(target.headers) == {"X-Api-Key": "real"}


def test_double_dollar_brace_is_a_literal_not_a_variable() -> None:
    target = parse_config(billing({"X-Template": "$${NOT_A_VAR}", "X-Price": "$5"}),
                          env={}).targets["billing"]
    assert isinstance(target, HttpTarget)
    assert dict(target.headers) == {"X-Template": "${NOT_A_VAR}", "X-Price": "$5"}


def test_env_value_is_not_substituted_twice() -> None:
    target = parse_config(billing({"X-Api-Key": "${KEY}"}),
                          env={"KEY": "${OTHER}", "OTHER": "no"}).targets["billing"]
    assert isinstance(target, HttpTarget)
    assert dict(target.headers) == {"X-Api-Key": "${OTHER}"}


def _secret_case(path: str, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return path, raw


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        _secret_case("drain_timeout", base_config(drain_timeout="${X}")),
        _secret_case("defaults.timeout", base_config(defaults={"timeout": "${X}"})),
        _secret_case("defaults.retry.attempts",
                     base_config(defaults={"retry": {"attempts": "${X}"}})),
        _secret_case("defaults.limits.max_message",
                     base_config(defaults={"limits": {"max_message": "${X}"}})),
        _secret_case("targets.up.kind", base_config(targets={"up": {"kind": "${X}"}})),
        _secret_case("targets.up.address",
                     base_config(targets={"up": {"kind": "grpc", "address": "${X}"}})),
        _secret_case("targets.b.base_url", with_target("b", {"kind": "http",
                                                              "base_url": "${X}"})),
        _secret_case("log.level", base_config(log={"level": "${X}"})),
        _secret_case("targets.k.producer.acks", with_target(
            "k", {"kind": "kafka", "bootstrap_servers": ["k:9092"],
                  "producer": {"acks": "${X}"}})),
        _secret_case("listeners[0].mode", with_listener(mode="${X}")),
        _secret_case("admin.address", base_config(admin={"address": "${X}"})),
        _secret_case("listeners[0].default_target",
                            with_listener(default_target="${X}")),
        _secret_case("targets.up.tls.ca_file", with_target(
            "up", {"kind": "grpc", "address": "up:50051", "tls": {"ca_file": "${X}"}})),
    ],
)
def test_value_from_env_never_appears_in_a_problem(path: str, raw: dict[str, Any]) -> None:
    problems = problems_of(copy.deepcopy(raw), env={"X": SECRET})
    assert any(p.startswith(f"{path}: ") for p in problems), problems
    assert not any(SECRET in p for p in problems), problems


def test_value_not_from_env_is_shown_in_a_problem() -> None:
    line = assert_one_problem(problems_of(base_config(drain_timeout="forever")), "drain_timeout")
    assert "forever" in line


# ---- listeners --------------------------------------------------------------


def test_missing_listeners_is_a_problem() -> None:
    assert problems_of({"targets": {}}) == ["listeners: at least one listener is required"]
    assert problems_of({"listeners": []}) == ["listeners: at least one listener is required"]
    assert problems_of(None) == ["listeners: at least one listener is required"]


def test_missing_listeners_is_reported_alongside_other_problems() -> None:
    problems = problems_of({"defaults": {"timeout": "soon"}})
    assert_one_problem(problems, "defaults.timeout", "unit")
    assert_one_problem(problems, "listeners", "at least one listener")


def test_listener_without_name_or_socket_is_a_problem() -> None:
    problems = problems_of(base_config(listeners=[{"mode": "0600"}]))
    assert_one_problem(problems, "listeners[0].name", "is required")
    assert_one_problem(problems, "listeners[0].socket", "is required")


def test_duplicate_listener_names_are_refused() -> None:
    raw = base_config()
    raw["listeners"].append({"name": "app", "socket": "/run/sidecar/other.sock"})
    assert problems_of(raw) == ["listeners[1].name: duplicate listener name 'app'"]


def test_duplicate_socket_paths_are_refused() -> None:
    raw = base_config()
    raw["listeners"].append({"name": "other", "socket": "/run/sidecar/app.sock"})
    assert_one_problem(problems_of(raw), "listeners[1].socket", "/run/sidecar/app.sock",
                       "another listener")


def test_socket_path_of_107_bytes_is_accepted() -> None:
    socket = "/tmp/" + "s" * 102
    assert len(socket) == 107
    config = parse_config(with_listener(socket=socket), env={})
    assert config.listeners[0].socket == socket


def test_socket_path_over_107_bytes_is_refused() -> None:
    socket = "/tmp/" + "s" * 103
    assert_one_problem(problems_of(with_listener(socket=socket)), "listeners[0].socket",
                       "108 bytes", "107")


def test_socket_path_length_is_counted_in_bytes_not_characters() -> None:
    socket = "/tmp/" + "é" * 52  # 57 characters, 109 bytes
    assert len(socket) < 107 < len(socket.encode())
    assert_one_problem(problems_of(with_listener(socket=socket)), "listeners[0].socket", "107")


def test_relative_socket_path_is_refused() -> None:
    assert_one_problem(problems_of(with_listener(socket="run/app.sock")),
                       "listeners[0].socket", "absolute")


@pytest.mark.parametrize(("mode", "expected"),
                         [("0660", 0o660), ("600", 0o600), ("0777", 0o777)])
def test_socket_mode_is_read_as_octal(mode: str | int, expected: int) -> None:
    assert parse_config(with_listener(mode=mode), env={}).listeners[0].mode == expected


@pytest.mark.parametrize("mode", ["0999", "rw-rw----", "01777", 0o1777, -1, True, "66"])
def test_invalid_socket_mode_is_refused(mode: str | int) -> None:
    assert_one_problem(problems_of(with_listener(mode=mode)), "listeners[0].mode", "octal")


def test_unquoted_decimal_looking_mode_is_not_silently_misread(tmp_path: Path) -> None:
    raw = with_listener()
    raw["listeners"][0].pop("mode", None)
    text = yaml.safe_dump(raw).replace("name: app", "name: app\n  mode: 400")
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    try:
        mode = load_config(str(path), env={}).listeners[0].mode
    except ConfigError as e:
        assert any(p.startswith("listeners[0].mode: ") for p in e.problems)
    else:
        assert mode == 0o400


def test_identity_is_read_from_the_listener() -> None:
    raw = with_listener(identity={"user_id": "svc-app", "trust_caller": False,
                                  "require_user": True})
    identity = parse_config(raw, env={}).listeners[0].identity
    assert identity.user_id == "svc-app"
    assert identity.trust_caller is False
    assert identity.require_user is True


def test_route_naming_a_missing_target_is_refused() -> None:
    raw = with_listener(routes=[{"service": "a.*", "target": "up"},
                                {"service": "b.*", "target": "nope"}])
    assert problems_of(raw) == ["listeners[0].routes[1].target: no target named 'nope'"]


def test_default_target_naming_a_missing_target_is_refused() -> None:
    assert problems_of(with_listener(default_target="nope")) == [
        "listeners[0].default_target: no target named 'nope'"
    ]


def test_route_or_default_target_naming_an_http_target_is_refused() -> None:
    raw = with_target("billing", {"kind": "http", "base_url": "http://billing:8080"})
    raw["listeners"][0].update(default_target="billing",
                               routes=[{"service": "billing.*", "target": "billing"}])
    problems = problems_of(raw)
    assert len(problems) == 2, problems
    assert_one_problem(problems, "listeners[0].default_target", "'billing' is http")
    assert_one_problem(problems, "listeners[0].routes[0].target", "'billing' is http")


def test_route_naming_a_kafka_target_is_refused() -> None:
    raw = with_target("events", {"kind": "kafka", "bootstrap_servers": ["k:9092"]})
    raw["listeners"][0]["routes"] = [{"service": "*", "target": "events"}]
    assert_one_problem(problems_of(raw), "listeners[0].routes[0].target", "kafka")


def test_route_without_service_or_target_is_refused() -> None:
    problems = problems_of(with_listener(routes=[{"service": "a.*"}, {"target": "up"}]))
    assert_one_problem(problems, "listeners[0].routes[0].target", "is required")
    assert_one_problem(problems, "listeners[0].routes[1].service", "is required")


def test_route_with_unknown_key_is_refused() -> None:
    problems = problems_of(with_listener(routes=[{"service": "a.*", "target": "up",
                                                  "method": "Get"}]))
    assert_one_problem(problems, "listeners[0].routes[0].method", "unknown key")


# ---- targets ------------------------------------------------------------------


def test_target_without_kind_is_refused() -> None:
    assert problems_of(with_target("x", {"address": "x:1"})) == ["targets.x.kind: is required"]


def test_target_with_unknown_kind_is_refused() -> None:
    assert problems_of(with_target("x", {"kind": "redis"})) == [
        "targets.x.kind: must be grpc, http or kafka, got 'redis'"
    ]


def test_target_kind_of_wrong_type_is_a_problem_not_a_crash() -> None:
    problems = problems_of(with_target("x", {"kind": ["grpc"]}))
    assert_one_problem(problems, "targets.x.kind")


def test_targets_that_are_not_a_mapping_are_refused() -> None:
    problems = problems_of(base_config(targets=["up"]))
    assert any(p.startswith("targets: ") for p in problems), problems


@pytest.mark.parametrize(
    "address",
    ["dns:///backtest:50051", "unix:///run/backtest.sock", "backtest:50051",
     "10.0.0.1:50051", "[::1]:50051", "ipv4:10.0.0.1:50051", "ipv4:10.0.0.1,10.0.0.2:81",
     "ipv6:[::1]:50051,::2", "unix-abstract:backtest"],
)
def test_grpc_target_address_forms_are_accepted(address: str) -> None:
    config = parse_config(base_config(targets={"up": {"kind": "grpc", "address": address}}),
                          env={})
    target = config.targets["up"]
    assert isinstance(target, GrpcTarget)
    assert target.address == address


@pytest.mark.parametrize("address", ["backtest", "http://backtest:50051", "backtest:port",
                                     "back test:50051"])
def test_invalid_grpc_target_address_is_refused(address: str) -> None:
    problems = problems_of(base_config(targets={"up": {"kind": "grpc", "address": address}}))
    assert problems == ["targets.up.address: must be unix:///path, dns:///host:port or host:port"]


@pytest.mark.parametrize("address", ["ipv4:backtest:50051", "ipv4:10.0.0.1:port",
                                     "ipv6:[::1]:x"])
def test_malformed_ipv4_or_ipv6_endpoint_list_is_refused_naming_the_endpoint(
    address: str
) -> None:
    problems = problems_of(base_config(targets={"up": {"kind": "grpc", "address": address}}))
    assert_one_problem(problems, "targets.up.address", f"address {address!r}", "is not an ipv")


def test_engine_grpcio_is_refused_saying_what_to_do() -> None:
    assert_one_problem(problems_of(with_listener(engine="grpcio")), "listeners[0].engine",
                       "no longer available", "remove the key")


def test_grpc_target_without_address_is_refused() -> None:
    assert problems_of(base_config(targets={"up": {"kind": "grpc"}})) == [
        "targets.up.address: is required"
    ]


def test_http_target_base_url_must_be_http() -> None:
    raw = with_target("b", {"kind": "http", "base_url": "ftp://b"})
    assert_one_problem(problems_of(raw), "targets.b.base_url", "http://")


def test_http_target_health_check_is_off_unless_configured() -> None:
    raw = with_target("b", {"kind": "http", "base_url": "http://b"})
    raw["targets"]["c"] = {"kind": "http", "base_url": "http://c",
                           "health": {"path": "/ready", "interval": "5s"}}
    targets = parse_config(raw, env={}).targets
    b, c = targets["b"], targets["c"]
    assert isinstance(b, HttpTarget) and isinstance(c, HttpTarget)
    assert b.health is None
    assert c.health is not None
    assert (c.health.path, c.health.interval, c.health.timeout) == ("/ready", 5.0, 2.0)


def tls_files(tmp_path: Path) -> dict[str, str]:
    """A real CA and a client pair: the loader loads them as a TLS client would."""
    ca = trustme.CA()
    client = ca.issue_cert("client.internal")
    files = {name: str(tmp_path / f"{name}.pem") for name in ("ca_file", "cert_file", "key_file")}
    ca.cert_pem.write_to_path(files["ca_file"])
    client.cert_chain_pems[0].write_to_path(files["cert_file"])
    client.private_key_pem.write_to_path(files["key_file"])
    return files


def test_tls_files_that_are_not_pem_are_refused_by_key_path(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN-----\n")
    raw = with_target("up", {"kind": "grpc", "address": "up:50051",
                             "tls": {**files, "ca_file": str(bad), "key_file": str(bad)}})
    assert problems_of(raw) == [
        "targets.up.tls.ca_file: not a usable PEM CA bundle: no certificate or crl found",
        "targets.up.tls.cert_file: certificate and key do not load as a PEM pair: "
        "not PEM, or the key does not belong to the certificate",
    ]


def test_tls_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    (tmp_path / "other").mkdir()
    other = tls_files(tmp_path / "other")
    raw = with_target("billing", {"kind": "http", "base_url": "https://billing",
                                  "tls": {**files, "key_file": other["key_file"]}})
    assert problems_of(raw) == [
        "targets.billing.tls.cert_file: certificate and key do not load as a PEM pair: "
        "key values mismatch"]


def test_tls_with_existing_files_is_accepted(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    raw = with_target("up", {"kind": "grpc", "address": "up:50051",
                             "tls": {**files, "server_name": "up.internal"}})
    target = parse_config(raw, env={}).targets["up"]
    assert isinstance(target, GrpcTarget)
    assert target.tls is not None
    assert target.tls.ca_file == files["ca_file"]
    assert target.tls.server_name == "up.internal"
    assert target.tls.insecure_skip_verify is False


def test_target_without_tls_has_tls_off() -> None:
    target = parse_config(base_config(), env={}).targets["up"]
    assert isinstance(target, GrpcTarget)
    assert target.tls is None


def test_insecure_skip_verify_on_grpc_target_is_refused() -> None:
    raw = with_target("up", {"kind": "grpc", "address": "up:50051",
                             "tls": {"insecure_skip_verify": True}})
    assert_one_problem(problems_of(raw), "targets.up.tls.insecure_skip_verify", "not supported")


def test_insecure_skip_verify_on_http_target_must_be_written_out() -> None:
    raw = with_target("b", {"kind": "http", "base_url": "https://b",
                            "tls": {"insecure_skip_verify": True}})
    raw["targets"]["c"] = {"kind": "http", "base_url": "https://c", "tls": {}}
    targets = parse_config(raw, env={}).targets
    b, c = targets["b"], targets["c"]
    assert isinstance(b, HttpTarget) and isinstance(c, HttpTarget)
    assert b.tls is not None and b.tls.insecure_skip_verify is True
    assert c.tls is not None and c.tls.insecure_skip_verify is False


def test_tls_files_that_do_not_exist_are_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    raw = with_target("up", {"kind": "grpc", "address": "up:50051",
                             "tls": {"ca_file": missing, "cert_file": missing,
                                     "key_file": missing}})
    problems = problems_of(raw)
    for key in ("ca_file", "cert_file", "key_file"):
        assert_one_problem(problems, f"targets.up.tls.{key}", "file not found")


def test_tls_cert_file_without_key_file_is_refused(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    raw = with_target("up", {"kind": "grpc", "address": "up:50051",
                             "tls": {"cert_file": files["cert_file"]}})
    assert problems_of(raw) == ["targets.up.tls.key_file: cert_file and key_file go together"]


def test_tls_key_file_without_cert_file_is_refused(tmp_path: Path) -> None:
    files = tls_files(tmp_path)
    raw = with_target("b", {"kind": "http", "base_url": "https://b",
                            "tls": {"key_file": files["key_file"]}})
    assert problems_of(raw) == ["targets.b.tls.cert_file: cert_file and key_file go together"]


def kafka(**fields: Any) -> dict[str, Any]:
    return with_target("events", {"kind": "kafka", "bootstrap_servers": ["kafka:9092"],
                                  **fields})


def test_kafka_producer_defaults_to_acks_all_and_idempotence() -> None:
    events = parse_config(kafka(), env={}).targets["events"]
    assert isinstance(events, KafkaTarget)
    assert events.producer.acks == "all"
    assert events.producer.idempotence is True
    assert events.topics == ("*",)


@pytest.mark.parametrize(("acks", "expected"), [("all", "all"), (1, "1"), (0, "0"), (-1, "-1")])
def test_kafka_acks_accepts_all_and_numbers(acks: str | int, expected: str) -> None:
    events = parse_config(kafka(producer={"acks": acks}), env={}).targets["events"]
    assert isinstance(events, KafkaTarget)
    assert events.producer.acks == expected


def test_kafka_producer_bad_acks_and_compression_are_refused() -> None:
    problems = problems_of(kafka(producer={"acks": 2, "compression": "brotli"}))
    assert len(problems) == 2, problems
    assert_one_problem(problems, "targets.events.producer.acks", "must be one of")
    assert_one_problem(problems, "targets.events.producer.compression", "zstd")


def test_kafka_target_without_bootstrap_servers_is_refused() -> None:
    raw = with_target("events", {"kind": "kafka"})
    assert problems_of(raw) == [
        "targets.events.bootstrap_servers: must list at least one host:port"]


def test_kafka_target_with_empty_bootstrap_servers_is_refused() -> None:
    problems = problems_of(kafka(bootstrap_servers=[]))
    assert_one_problem(problems, "targets.events.bootstrap_servers")


def test_kafka_bootstrap_servers_must_be_a_list_of_strings() -> None:
    problems = problems_of(kafka(bootstrap_servers=["k:9092", 7]))
    assert problems == ["targets.events.bootstrap_servers[1]: must be a non-empty string"]


# ---- retry.on -------------------------------------------------------------------


def test_retry_on_accepts_grpc_code_names_in_any_case_and_5xx_statuses() -> None:
    raw = base_config(defaults={"retry": {"on": ["unavailable", "Resource_Exhausted",
                                                 "ABORTED", 503, 599]}})
    retry = parse_config(raw, env={}).defaults.retry
    assert retry.on == ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED", 503, 599)


@pytest.mark.parametrize("item", ["NOPE", 404, 600, 499, True, "503", 503.0])
def test_retry_on_refuses_other_values_naming_the_item(item: Any) -> None:
    raw = base_config()
    raw["targets"]["up"]["retry"] = {"on": ["UNAVAILABLE", item]}
    assert problems_of(raw) == [
        "targets.up.retry.on[1]: must be a gRPC status code name or an HTTP 5xx status"
    ]


def test_retry_on_must_be_a_list() -> None:
    raw = base_config(defaults={"retry": {"on": "UNAVAILABLE"}})
    assert_one_problem(problems_of(raw), "defaults.retry.on", "a list")


def test_retry_attempts_below_one_is_refused() -> None:
    raw = base_config(defaults={"retry": {"attempts": 0}})
    assert problems_of(raw) == ["defaults.retry.attempts: must be >= 1"]


# ---- admin, log ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("127.0.0.1:9901", "127.0.0.1", 9901), ("localhost:8080", "localhost", 8080),
     ("[::1]:9901", "::1", 9901), ("0.0.0.0:65535", "0.0.0.0", 65535)],
)
def test_admin_host_port_address_is_parsed(address: str, host: str, port: int) -> None:
    admin = parse_config(base_config(admin={"address": address}), env={}).admin
    assert (admin.host, admin.port, admin.unix_path) == (host, port, None)
    assert admin.enabled


def test_admin_unix_address_is_parsed() -> None:
    admin = parse_config(base_config(admin={"address": "unix:/run/sidecar/admin.sock"}),
                         env={}).admin
    assert admin.unix_path == "/run/sidecar/admin.sock"
    assert admin.host is None
    assert admin.enabled


@pytest.mark.parametrize("admin", [None, {"address": None}])
def test_admin_null_disables_the_endpoint(admin: Any) -> None:
    assert parse_config(base_config(admin=admin), env={}).admin.enabled is False


@pytest.mark.parametrize("address", ["localhost", "localhost:http", ":9901", "host:70000",
                                     "unix:relative.sock"])
def test_bad_admin_address_is_refused(address: str) -> None:
    assert_one_problem(problems_of(base_config(admin={"address": address})), "admin.address")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_level_accepts_its_choices(level: str) -> None:
    assert parse_config(base_config(log={"level": level}), env={}).log.level == level


@pytest.mark.parametrize("level", ["verbose", "trace", "critical", ""])
def test_log_level_outside_choices_is_refused(level: str) -> None:
    problems = problems_of(base_config(log={"level": level}))
    if level:
        assert_one_problem(problems, "log.level", "debug, info, warning, error")
    else:
        assert_one_problem(problems, "log.level")


# ---- files ---------------------------------------------------------------------


def test_missing_config_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (line,) = info.value.problems
    assert line.startswith(f"{path}: ")
    assert "cannot read" in line


def test_invalid_yaml_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listeners: [\n  - name: app\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (line,) = info.value.problems
    assert line.startswith(f"{path}: ")
    assert "not valid YAML" in line


def test_empty_config_file_asks_for_listeners(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == ["listeners: at least one listener is required"]


def test_yaml_document_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert any("must be a mapping" in p for p in info.value.problems)


def test_load_config_reads_env_from_the_given_mapping(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(base_config(drain_timeout="${DRAIN}")))
    assert load_config(str(path), env={"DRAIN": "250ms"}).drain_timeout == 0.25


def test_bare_on_key_in_yaml_is_retry_on_not_a_boolean(tmp_path: Path) -> None:
    """YAML 1.1 reads `on:` as true; the contract's `retry: {on: [...]}` must still work."""
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "listeners: [{name: app, socket: /tmp/a.sock}]\n"
        "defaults: {retry: {on: [RESOURCE_EXHAUSTED, 503]}}\n"
        "targets: {t: {kind: grpc, address: 'x:1', required: yes}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(str(path), env={})
    # `yes` is a string in YAML 1.2, so it is refused rather than read as true
    assert err.value.problems == ["targets.t.required: must be true or false, got 'yes'"]
    path.write_text(path.read_text().replace("required: yes", "required: true"))
    config = load_config(str(path), env={})
    assert config.defaults.retry.on == ("RESOURCE_EXHAUSTED", 503)


def test_a_listeners_request_buffer_is_a_size_defaulting_to_64_mib() -> None:
    assert parse_config(base_config(), env={}).listeners[0].max_request_buffer == 64 << 20
    config = parse_config(with_listener(max_request_buffer="8MiB"), env={})
    assert config.listeners[0].max_request_buffer == 8 << 20
    assert_one_problem(problems_of(with_listener(max_request_buffer="lots")),
                       "listeners[0].max_request_buffer")
