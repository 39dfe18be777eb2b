"""The listener keys of the security model: read once, every mistake named by key path."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import PeerRule, RateLimit
from sidecar.config_loader import parse_config
from sidecar.errors import ConfigError


def _config(**listener: Any) -> dict[str, Any]:
    return {"listeners": [{"name": "app", "socket": "/tmp/sc-app.sock", **listener}],
            "targets": {"up": {"kind": "grpc", "address": "127.0.0.1:1"}}}


def _problems(**listener: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(**listener))
    return err.value.problems


def test_peers_are_read_in_order_and_unknown_peers_are_rejected_once_peers_are_given() -> None:
    identity = parse_config(_config(identity={"peers": [
        {"uid": 1000, "user_id": "svc-orders"}, {"gid": 2000, "user_id": "batch-jobs"}]})
    ).listeners[0].identity
    assert identity.peers == (PeerRule("svc-orders", uid=1000),
                              PeerRule("batch-jobs", gid=2000))
    assert identity.unknown_peer == "reject"


def test_without_peers_unknown_peers_are_allowed_as_before() -> None:
    assert parse_config(_config()).listeners[0].identity.unknown_peer == "allow"
    explicit = parse_config(_config(identity={"unknown_peer": "reject"}))
    assert explicit.listeners[0].identity.unknown_peer == "reject"


def test_a_peer_rule_needs_exactly_one_of_uid_and_gid_and_a_printable_user_id() -> None:
    assert _problems(identity={"peers": [
        {"uid": 1, "gid": 1, "user_id": "a"}, {"user_id": "b"}, {"uid": -1, "user_id": "c"},
        {"uid": "1000", "user_id": "d"}, {"uid": 5}, {"gid": 5, "user_id": "tab\there"},
        {"uid": 6, "user_id": "e", "pid": 9},
    ], "unknown_peer": "maybe"}) == [
        "listeners[0].identity.peers[0]: give exactly one of uid or gid (with user_id)",
        "listeners[0].identity.peers[1]: give exactly one of uid or gid (with user_id)",
        "listeners[0].identity.peers[2].uid: must be >= 0",
        "listeners[0].identity.peers[3].uid: must be a whole number, got '1000'",
        "listeners[0].identity.peers[4].user_id: is required",
        "listeners[0].identity.peers[5].user_id: must be printable ASCII (it is sent as "
        "metadata and headers)",
        "listeners[0].identity.peers[6].pid: unknown key (known: gid, uid, user_id)",
        "listeners[0].identity.unknown_peer: must be one of reject, allow, got 'maybe'",
    ]


@pytest.mark.parametrize(("rate", "per_second"), [
    ("100/s", 100.0), ("6000/m", 100.0), ("5/250ms", 20.0), ("1/h", 1 / 3600),
    ("30 / 2s", 15.0), ("0.5/s", 0.5),
])
def test_rate_is_calls_per_time_held_as_calls_per_second(rate: str, per_second: float) -> None:
    limit = parse_config(_config(rate_limit={"rate": rate})).listeners[0].rate_limit
    assert limit is not None
    assert limit.rate == pytest.approx(per_second)


def test_burst_defaults_to_a_seconds_worth_and_per_to_the_listener() -> None:
    assert parse_config(_config(rate_limit={"rate": "100/s"})).listeners[0].rate_limit == (
        RateLimit(rate=100.0, burst=100, per="listener"))
    assert parse_config(_config(rate_limit={"rate": "10/m"})).listeners[0].rate_limit == (
        RateLimit(rate=10 / 60, burst=1, per="listener"))


def test_a_bad_rate_limit_is_named_by_key_path() -> None:
    assert _problems(rate_limit={"rate": 100, "burst": 0, "per": "user"}) == [
        "listeners[0].rate_limit.rate: must be calls per time, like 100/s, 6000/m or 5/250ms,"
        " got 100",
        "listeners[0].rate_limit.burst: must be >= 1",
        "listeners[0].rate_limit.per: must be one of listener, caller, got 'user'",
    ]
    assert _problems(rate_limit={"burst": 5}) == [
        "listeners[0].rate_limit.rate: is required (calls per time, like 100/s)"]
    assert _problems(rate_limit={"rate": "0/s"}) == ["listeners[0].rate_limit.rate: must be > 0"]


def test_targets_must_be_a_list_of_names() -> None:
    assert _problems(targets="up") == ["listeners[0].targets: must be a list, got 'up'"]
    assert _problems(targets=["up", ""]) == ["listeners[0].targets[1]: must be a non-empty string"]


def test_caller_uid_is_off_unless_named_and_then_reserved_in_every_case_and_bin_form() -> None:
    config = _config()
    config["targets"]["named"] = {"kind": "grpc", "address": "127.0.0.1:1",
                                  "metadata": {"caller_uid": "X-Caller-Uid"}}
    targets = parse_config(config).targets
    assert targets["up"].metadata.caller_uid is None
    names = targets["named"].metadata
    assert names.caller_uid == "X-Caller-Uid"
    assert {"x-caller-uid", "x-caller-uid-bin", "user-id-bin", "x-user-id"} <= names.reserved
