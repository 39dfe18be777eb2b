"""Caller identity from the kernel: callers run as other uids over the real socket."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from sidecar._generated import sidecar_pb2
from tests.conftest import (
    Daemon,
    Upstream,
    basic_config,
    eventually,
    free_port,
    write_config,
)
from tests.http_upstream import HttpUpstream
from tests.kafka_broker import Broker, broker
from tests.peer_client import (
    GID,
    OTHER_GID,
    OTHER_UID,
    UID,
    Call,
    call_as,
    needs_root,
    open_to_all,
)

__all__ = ["broker"]  # the fixture, imported for pytest
pytestmark = needs_root

BATCH_GID = 2000
UNARY = "/test.Echo/Unary"
HTTP_CALL = "/sidecar.v1.HttpProxy/Call"
# What a hostile caller sends to pose as someone else, under every name it could try.
CLAIMS: list[tuple[str, str | bytes]] = [
    ("x-user-id", "root"), ("user-id", "root"), ("user-id-bin", b"root"),
    ("x-user-id-bin", b"root"),
]


def _config(short_dir: Path, upstream: Upstream | None, http: HttpUpstream | None = None,
            unknown_peer: str = "reject", **target_metadata: str) -> dict[str, Any]:
    open_to_all(short_dir)
    config = basic_config(short_dir, upstream, mode="0666", identity={
        "peers": [{"uid": UID, "user_id": "svc-orders"},
                  {"gid": BATCH_GID, "user_id": "batch-jobs"}],
        "unknown_peer": unknown_peer,
    })
    if upstream is not None and target_metadata:
        config["targets"]["up"]["metadata"] = target_metadata
    if http is not None:
        config["targets"]["web"] = {"kind": "http", "base_url": http.url,
                                    "metadata": target_metadata}
    return config


def _http_call(**headers: str) -> bytes:
    """An HttpProxy request for GET /echo on target `web` with these headers."""
    return sidecar_pb2.HttpRequest(
        target="web", method="GET", path="/echo",
        headers=[sidecar_pb2.Header(name=k.replace("_", "-"), value=v)
                 for k, v in headers.items()]).SerializeToString()


def test_a_mapped_uid_is_its_user_id_upstream_whatever_it_claims(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> None:
    d = daemon_factory(_config(short_dir, upstream))
    [answer] = call_as(UID, GID, d.socket, [Call(UNARY, b"hi", CLAIMS)])
    assert (answer.code, answer.reply) == ("OK", b"hi")
    [seen] = upstream.seen
    assert seen.metadata["user-id"] == "svc-orders"
    assert not {"x-user-id", "user-id-bin", "x-user-id-bin"} & set(seen.metadata)


def test_a_mapped_uid_is_its_user_id_on_http_calls_whatever_it_claims(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        http_upstream: HttpUpstream) -> None:
    d = daemon_factory(_config(short_dir, None, http_upstream))
    request = _http_call(X_User_Id="root", User_Id="root", X_User_Id_Bin="cm9vdA")
    [answer] = call_as(UID, GID, d.socket, [Call(HTTP_CALL, request, CLAIMS)])
    assert answer.code == "OK", answer.details
    [got] = http_upstream.received
    assert "User-Id" not in got.headers and "X-User-Id-Bin" not in got.headers
    assert got.headers.getall("X-User-Id") == ["svc-orders"]


def test_a_mapped_uid_is_its_user_id_on_kafka_messages_whatever_it_claims(
        daemon_factory: Callable[..., Daemon], short_dir: Path, broker: Broker) -> None:
    topic = broker.create_topic(partitions=1)
    config = _config(short_dir, None)
    config["targets"]["events"] = {"kind": "kafka", "bootstrap_servers": [broker.bootstrap]}
    d = daemon_factory(config)
    request = sidecar_pb2.PublishRequest(
        target="events", topic=topic, value=b"v",
        headers=[sidecar_pb2.Header(name="user-id", value="root"),
                 sidecar_pb2.Header(name="User-Id-Bin", value="cm9vdA")])
    [answer] = call_as(UID, GID, d.socket, [Call("/sidecar.v1.Publisher/Publish",
                                                 request.SerializeToString(), CLAIMS)])
    assert answer.code == "OK", answer.details
    [message] = broker.read_all(topic)
    got = message.headers() or []
    assert [v for k, v in got if k.lower().startswith("user-id")] == [b"svc-orders"]


def test_a_peer_is_matched_by_gid_when_no_uid_rule_matches(
        daemon_factory: Callable[..., Daemon], short_dir: Path,
        http_upstream: HttpUpstream) -> None:
    d = daemon_factory(_config(short_dir, None, http_upstream))
    [answer] = call_as(OTHER_UID, BATCH_GID, d.socket, [Call(HTTP_CALL, _http_call(), CLAIMS)])
    assert answer.code == "OK", answer.details
    assert http_upstream.received[0].headers["X-User-Id"] == "batch-jobs"


def test_an_unmapped_uid_is_denied_naming_it_and_nothing_reaches_an_upstream(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
        http_upstream: HttpUpstream) -> None:
    d = daemon_factory(_config(short_dir, upstream, http_upstream))
    answers = call_as(OTHER_UID, OTHER_GID, d.socket, [
        Call(UNARY, b"hi", [("x-user-id", "svc-orders")]),
        Call(HTTP_CALL, _http_call(), [("x-user-id", "svc-orders")]),
    ])
    for answer in answers:
        assert answer.code == "PERMISSION_DENIED"
        assert f"peer uid {OTHER_UID}" in answer.details and "'app'" in answer.details
    assert upstream.seen == []
    assert http_upstream.received == []


def test_root_is_an_unknown_peer_too_when_no_rule_names_it(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> None:
    d = daemon_factory(_config(short_dir, upstream))
    with d.channel() as ch, pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(UNARY)(b"hi", timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "peer uid 0" in (err.value.details() or "")
    assert upstream.seen == []


def test_an_unmapped_uid_is_served_as_before_with_unknown_peer_allow(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
        http_upstream: HttpUpstream) -> None:
    d = daemon_factory(_config(short_dir, upstream, http_upstream, unknown_peer="allow"))
    answers = call_as(OTHER_UID, OTHER_GID, d.socket, [
        Call(UNARY, b"hi", [("x-user-id", "carol")]),
        Call(HTTP_CALL, _http_call(), [("x-user-id", "carol")]),
    ])
    assert [a.code for a in answers] == ["OK", "OK"]
    assert upstream.seen[0].metadata["user-id"] == "carol"
    assert http_upstream.received[0].headers["X-User-Id"] == "carol"


def test_peer_uid_gid_pid_are_in_the_access_log_and_status_but_not_sent_upstream(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> None:
    config = _config(short_dir, upstream, unknown_peer="allow")
    admin = f"127.0.0.1:{free_port()}"
    config["admin"] = {"address": admin}
    d = daemon_factory(config)
    [answer] = call_as(UID, GID, d.socket, [Call(UNARY, b"hi")])
    assert answer.code == "OK"
    d.wait_log(f'"sidecar.peer.uid":{UID}')
    [entry] = [r for r in d.records() if r.get("sidecar.peer.uid") == UID]
    assert (entry["sidecar.peer.gid"], entry["sidecar.status"]) == (GID, "OK")
    assert isinstance(entry["sidecar.peer.pid"], int) and entry["sidecar.peer.pid"] > 0
    assert not {k for k in upstream.seen[0].metadata if "uid" in k or "caller" in k}

    with d.channel() as ch:  # a connection held open: /status lists it with its peer
        ch.unary_unary(UNARY)(b"hi", timeout=5)

        def listed() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as reply:
                status = orjson.loads(reply.read())
            peers = status["listeners"][0]["peers"]
            mine = [p for p in peers if p["pid"] == os.getpid()]
            assert mine, peers
            return dict(mine[0])

        peer = eventually(listed)
    assert (peer["uid"], peer["gid"], peer["user_id"]) == (0, 0, None)
    assert peer["streams"] == 0


def test_caller_uid_reaches_a_target_only_under_the_name_it_asks_for(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream,
        http_upstream: HttpUpstream) -> None:
    config = _config(short_dir, upstream, http_upstream, caller_uid="x-caller-uid")
    d = daemon_factory(config)
    forged = [("x-caller-uid", "0"), ("x-caller-uid-bin", b"0")]
    request = _http_call(X_Caller_Uid="0", x_caller_uid_bin="MA")
    answers = call_as(UID, GID, d.socket, [Call(UNARY, b"hi", forged),
                                           Call(HTTP_CALL, request)])
    assert [a.code for a in answers] == ["OK", "OK"]
    assert upstream.seen[0].metadata["x-caller-uid"] == str(UID)
    assert "x-caller-uid-bin" not in upstream.seen[0].metadata
    got = http_upstream.received[0].headers
    assert got.getall("x-caller-uid") == [str(UID)]
    assert "x-caller-uid-bin" not in got


def test_a_reload_applies_new_peer_rules_and_allow_list_to_open_connections(
        daemon_factory: Callable[..., Daemon], short_dir: Path, upstream: Upstream) -> None:
    config = basic_config(short_dir, upstream)
    d = daemon_factory(config)
    with d.channel() as ch:
        unary = ch.unary_unary(UNARY)
        unary(b"x", metadata=[("x-user-id", "claimed")], timeout=5)
        config["listeners"][0]["identity"] = {"peers": [{"uid": 0, "user_id": "ops"}]}
        write_config(d.config_path, config)
        d.signal(signal.SIGHUP)
        d.wait_log('"reloaded"')
        unary(b"x", metadata=[("x-user-id", "claimed")], timeout=5)  # the same connection
        config["listeners"][0]["targets"] = ["elsewhere"]
        del config["listeners"][0]["default_target"]
        config["targets"]["elsewhere"] = {"kind": "grpc", "address": "127.0.0.1:1"}
        write_config(d.config_path, config)
        d.signal(signal.SIGHUP)

        def reloaded_twice() -> None:
            assert len(d.wait_log('"reloaded"')) == 2

        eventually(reloaded_twice)
        with pytest.raises(grpc.RpcError) as err:
            unary(b"x", metadata=[("sidecar-target", "up")], timeout=5)
    assert [s.metadata["user-id"] for s in upstream.seen] == ["claimed", "ops"]
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
