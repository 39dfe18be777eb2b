"""Method -> target: `sidecar-target` hint, then routes (first match), then default_target."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import Config
from sidecar.config_loader import parse_config
from sidecar.errors import InvalidRequestError, NoRouteError, UnknownTargetError
from sidecar.routing import Router
from sidecar.status import StatusCode

TARGETS: dict[str, Any] = {
    "orders": {"kind": "grpc", "address": "orders:50051"},
    "backtest": {"kind": "grpc", "address": "backtest:50051"},
    "backtest_all": {"kind": "grpc", "address": "backtest-all:50051"},
    "exact": {"kind": "grpc", "address": "exact:50051"},
    "billing": {"kind": "http", "base_url": "http://billing:8080"},
    "events": {"kind": "kafka", "bootstrap_servers": ["kafka:9092"]},
}

ROUTES = [
    {"service": "backtest.v1.Special", "target": "exact"},
    {"service": "backtest.v1.*", "target": "backtest"},
    {"service": "backtest.*", "target": "backtest_all"},
]


def make_router(*, default_target: str | None = "orders",
                routes: list[dict[str, str]] | None = None) -> Router:
    listener: dict[str, Any] = {"name": "app", "socket": "/run/sidecar/app.sock",
                                "routes": ROUTES if routes is None else routes}
    if default_target is not None:
        listener["default_target"] = default_target
    config: Config = parse_config({"listeners": [listener], "targets": TARGETS}, env={})
    return Router(config.listeners[0], config.targets)


def test_hint_beats_routes_and_default_target() -> None:
    router = make_router()
    assert router.route("/backtest.v1.Svc/Run", "orders") == "orders"
    assert router.route("/other.Svc/Run", "backtest") == "backtest"


def test_route_beats_default_target() -> None:
    assert make_router().route("/backtest.v1.Svc/Run", None) == "backtest"


def test_default_target_takes_methods_no_route_matches() -> None:
    assert make_router().route("/orders.v1.Orders/Create", None) == "orders"


def test_glob_route_matches_by_service_not_method() -> None:
    router = make_router(default_target=None,
                         routes=[{"service": "backtest.v1.*", "target": "backtest"}])
    assert router.route("/backtest.v1.Svc/Method", None) == "backtest"
    assert router.route("/backtest.v1.Other/Anything", None) == "backtest"
    with pytest.raises(NoRouteError):
        router.route("/other.v1.Svc/backtest.v1.Method", None)


def test_glob_route_does_not_match_a_service_that_only_contains_it() -> None:
    router = make_router(default_target=None,
                         routes=[{"service": "backtest.v1.*", "target": "backtest"}])
    with pytest.raises(NoRouteError):
        router.route("/x.backtest.v1.Svc/Run", None)
    with pytest.raises(NoRouteError):
        router.route("/backtest.v2.Svc/Run", None)


def test_exact_service_route_matches_only_that_service() -> None:
    router = make_router(default_target="orders",
                         routes=[{"service": "backtest.v1.Svc", "target": "backtest"}])
    assert router.route("/backtest.v1.Svc/Run", None) == "backtest"
    assert router.route("/backtest.v1.SvcTwo/Run", None) == "orders"


def test_first_matching_route_wins() -> None:
    router = make_router()
    assert router.route("/backtest.v1.Special/Run", None) == "exact"
    assert router.route("/backtest.v1.Svc/Run", None) == "backtest"
    assert router.route("/backtest.v2.Svc/Run", None) == "backtest_all"


def test_first_matching_route_wins_even_when_a_later_one_is_more_specific() -> None:
    router = make_router(routes=list(reversed(ROUTES)))
    assert router.route("/backtest.v1.Special/Run", None) == "backtest_all"


def test_repeated_calls_route_the_same_way() -> None:
    router = make_router()
    for _ in range(3):
        assert router.route("/backtest.v1.Svc/Run", None) == "backtest"
        assert router.route("/orders.v1.Orders/Create", None) == "orders"
        assert router.route("/orders.v1.Orders/Create", "backtest") == "backtest"


def test_no_route_and_no_default_is_unimplemented_naming_the_method() -> None:
    router = make_router(default_target=None, routes=[])
    with pytest.raises(NoRouteError) as info:
        router.route("/orders.v1.Orders/Create", None)
    assert info.value.grpc_status == StatusCode.UNIMPLEMENTED
    assert "/orders.v1.Orders/Create" in str(info.value)
    assert "'app'" in str(info.value)


def test_no_route_is_raised_again_on_a_repeated_call() -> None:
    router = make_router(default_target=None, routes=[])
    for _ in range(2):
        with pytest.raises(NoRouteError):
            router.route("/orders.v1.Orders/Create", None)


def test_hint_naming_an_unknown_target_is_not_found() -> None:
    with pytest.raises(UnknownTargetError) as info:
        make_router().route("/orders.v1.Orders/Create", "nope")
    assert info.value.grpc_status == StatusCode.NOT_FOUND
    assert "'nope'" in str(info.value)


@pytest.mark.parametrize(("target", "kind"), [("billing", "http"), ("events", "kafka")])
def test_hint_naming_a_non_grpc_target_is_an_invalid_request(target: str, kind: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make_router().route("/orders.v1.Orders/Create", target)
    assert info.value.grpc_status == StatusCode.INVALID_ARGUMENT
    assert f"'{target}'" in str(info.value)
    assert kind in str(info.value)


def test_hint_is_checked_even_when_a_route_would_match() -> None:
    with pytest.raises(UnknownTargetError):
        make_router().route("/backtest.v1.Svc/Run", "nope")
