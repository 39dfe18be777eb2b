"""Per-call context: identity under the listener's policy, ids, trace context, passthrough."""

from __future__ import annotations

import re
import uuid

import pytest

from sidecar import context
from sidecar.config import Identity
from sidecar.context import build_context, require_identity
from sidecar.errors import UnauthenticatedError
from sidecar.status import StatusCode

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HEX16 = re.compile(r"[0-9a-f]{16}")
HEX32 = re.compile(r"[0-9a-f]{32}")

TRUSTING = Identity()
NOT_TRUSTING = Identity(trust_caller=False)


def is_uuid4(text: str) -> bool:
    try:
        value = uuid.UUID(text)
    except ValueError:
        return False
    return value.version == 4 and str(value) == text


# ---- user id ----------------------------------------------------------------


@pytest.mark.parametrize("key", ["x-user-id", "user-id"])
def test_trusted_caller_user_id_is_taken_from_either_key(key: str) -> None:
    ctx = build_context([(key, "alice")], TRUSTING)
    assert ctx.user_id == "alice"


def test_trusted_caller_user_id_beats_the_listener_user_id() -> None:
    ctx = build_context([("x-user-id", "alice")], Identity(user_id="svc", trust_caller=True))
    assert ctx.user_id == "alice"


def test_listener_user_id_is_used_when_caller_sends_none() -> None:
    assert build_context([], Identity(user_id="svc")).user_id == "svc"


def test_listener_user_id_is_used_when_caller_sends_an_empty_one() -> None:
    assert build_context([("x-user-id", "")], Identity(user_id="svc")).user_id == "svc"


def test_no_user_id_anywhere_leaves_it_unset() -> None:
    assert build_context([], TRUSTING).user_id is None


@pytest.mark.parametrize("key", ["x-user-id", "user-id"])
def test_untrusted_caller_user_id_is_replaced_by_the_listener_user_id(key: str) -> None:
    ctx = build_context([(key, "mallory")], Identity(user_id="svc", trust_caller=False))
    assert ctx.user_id == "svc"


def test_untrusted_caller_user_id_is_dropped_when_listener_has_none() -> None:
    ctx = build_context([("x-user-id", "mallory")], NOT_TRUSTING)
    assert ctx.user_id is None


@pytest.mark.parametrize("identity", [TRUSTING, NOT_TRUSTING])
def test_caller_user_id_is_never_forwarded_as_passthrough(identity: Identity) -> None:
    ctx = build_context([("x-user-id", "mallory"), ("user-id", "mallory")], identity)
    assert ctx.passthrough == []


# ---- require_identity ----------------------------------------------------------


def test_required_identity_missing_is_refused_as_unauthenticated() -> None:
    identity = Identity(require_user=True)
    ctx = build_context([], identity)
    with pytest.raises(UnauthenticatedError) as info:
        require_identity(ctx, identity, "app")
    assert info.value.grpc_status == StatusCode.UNAUTHENTICATED
    assert "'app'" in str(info.value)


def test_required_identity_dropped_from_untrusted_caller_is_refused() -> None:
    identity = Identity(trust_caller=False, require_user=True)
    ctx = build_context([("x-user-id", "mallory")], identity)
    with pytest.raises(UnauthenticatedError):
        require_identity(ctx, identity, "app")


@pytest.mark.parametrize(
    ("metadata", "identity"),
    [
        ([("x-user-id", "alice")], Identity(require_user=True)),
        ([], Identity(user_id="svc", require_user=True)),
        ([("x-user-id", "mallory")], Identity(user_id="svc", trust_caller=False,
                                              require_user=True)),
    ],
)
def test_required_identity_present_passes(
    metadata: list[tuple[str, str]], identity: Identity
) -> None:
    require_identity(build_context(metadata, identity), identity, "app")


def test_identity_not_required_lets_anonymous_calls_through() -> None:
    require_identity(build_context([], TRUSTING), TRUSTING, "app")


# ---- correlation and request ids -------------------------------------------------


@pytest.mark.parametrize("key", ["x-correlation-id", "correlation-id"])
def test_valid_correlation_id_is_kept_from_either_key(key: str) -> None:
    ctx = build_context([(key, "order-42 / step 1")], TRUSTING)
    assert ctx.correlation_id == "order-42 / step 1"


def test_correlation_id_of_128_printable_characters_is_kept() -> None:
    value = "c" * 128
    assert build_context([("x-correlation-id", value)], TRUSTING).correlation_id == value


@pytest.mark.parametrize(
    "value",
    ["", "c" * 129, "bad\x01id", "tab\there", "new\nline", "caf\u00e9"],
    ids=["empty", "129-chars", "control", "tab", "newline", "non-ascii"],
)
def test_malformed_correlation_id_is_replaced_by_a_uuid4(value: str) -> None:
    ctx = build_context([("x-correlation-id", value)], TRUSTING)
    assert ctx.correlation_id != value
    assert is_uuid4(ctx.correlation_id)


def test_missing_correlation_id_is_a_new_uuid4_each_call() -> None:
    first = build_context([], TRUSTING).correlation_id
    second = build_context([], TRUSTING).correlation_id
    assert is_uuid4(first) and is_uuid4(second)
    assert first != second


def test_request_id_is_a_new_uuid4_each_call() -> None:
    metadata = [("x-correlation-id", "same"), ("request-id", "caller-chosen")]
    ids = {build_context(metadata, TRUSTING).request_id for _ in range(5)}
    assert len(ids) == 5
    assert all(is_uuid4(i) for i in ids)
    assert "caller-chosen" not in ids


def test_the_new_ids_of_one_call_share_no_digits_drawn() -> None:
    # They are cut from one random draw: each must come from its own part of it.
    for _ in range(20):
        ctx = build_context([], TRUSTING)
        parts = [ctx.correlation_id.replace("-", ""), ctx.request_id.replace("-", ""),
                 ctx.trace_id, ctx.span_id]
        assert len({p[:16] for p in parts}) == 4
        assert is_uuid4(ctx.correlation_id) and is_uuid4(ctx.request_id)


def test_new_trace_and_span_ids_are_never_all_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    # W3C trace context: an all-zero trace id or span id is invalid; a draw of zeros happens.
    monkeypatch.setattr(context, "_bits", lambda bits: 0)
    ctx = build_context([], TRUSTING)
    assert ctx.trace_id == "0" * 31 + "1" and ctx.span_id == "0" * 15 + "1"
    assert is_uuid4(ctx.request_id) and is_uuid4(ctx.correlation_id)


def test_correlation_id_is_not_forwarded_as_passthrough() -> None:
    ctx = build_context([("x-correlation-id", "a"), ("correlation-id", "b")], TRUSTING)
    assert ctx.passthrough == []


# ---- trace context -----------------------------------------------------------------


def test_valid_traceparent_is_continued_with_a_new_span() -> None:
    ctx = build_context([("traceparent", TRACEPARENT), ("tracestate", "vendor=abc")], TRUSTING)
    assert ctx.trace_id == TRACE_ID
    assert ctx.trace_flags == "01"
    assert HEX16.fullmatch(ctx.span_id)
    assert ctx.span_id != PARENT_ID
    assert ctx.tracestate == "vendor=abc"
    assert ctx.traceparent == f"00-{TRACE_ID}-{ctx.span_id}-01"


def test_caller_trace_flags_are_kept() -> None:
    ctx = build_context([("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00")], TRUSTING)
    assert ctx.trace_flags == "00"
    assert ctx.trace_id == TRACE_ID


def test_each_call_gets_its_own_span_in_the_same_trace() -> None:
    spans = {build_context([("traceparent", TRACEPARENT)], TRUSTING).span_id for _ in range(5)}
    assert len(spans) == 5


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}",
        f"00_{TRACE_ID}_{PARENT_ID}_01",
        "garbage",
        "",
    ],
    ids=["zero-trace", "zero-span", "version-ff", "uppercase", "short-trace", "no-flags",
         "underscores", "garbage", "empty"],
)
def test_invalid_traceparent_starts_a_new_trace_and_drops_tracestate(traceparent: str) -> None:
    ctx = build_context([("traceparent", traceparent), ("tracestate", "vendor=abc")], TRUSTING)
    assert HEX32.fullmatch(ctx.trace_id)
    assert ctx.trace_id != TRACE_ID
    assert ctx.trace_id != "0" * 32
    assert HEX16.fullmatch(ctx.span_id)
    assert ctx.trace_flags == "01"
    assert ctx.tracestate is None


def test_missing_traceparent_starts_a_new_trace_each_call() -> None:
    first = build_context([("tracestate", "vendor=abc")], TRUSTING)
    second = build_context([], TRUSTING)
    assert HEX32.fullmatch(first.trace_id) and HEX32.fullmatch(second.trace_id)
    assert first.trace_id != second.trace_id
    assert first.tracestate is None


def test_trace_headers_are_not_forwarded_as_passthrough() -> None:
    ctx = build_context([("traceparent", TRACEPARENT), ("tracestate", "v=1")], TRUSTING)
    assert ctx.passthrough == []


# ---- passthrough, authorization, target hint -----------------------------------------


def test_passthrough_keeps_other_keys_in_order_including_binary_values() -> None:
    metadata: list[tuple[str, str | bytes]] = [
        ("x-tenant", "acme"),
        ("trace-bin", b"\x00\x01\xff"),
        ("x-tenant", "second"),
        ("custom-header", "v"),
    ]
    ctx = build_context(metadata, TRUSTING)
    assert ctx.passthrough == metadata


def test_passthrough_excludes_the_daemons_own_and_replaced_keys() -> None:
    excluded: list[tuple[str, str | bytes]] = [
        ("sidecar-target", "up"),
        ("sidecar-anything", "x"),
        ("x-user-id", "u"),
        ("user-id", "u"),
        ("x-correlation-id", "c"),
        ("correlation-id", "c"),
        ("request-id", "r"),
        ("x-request-id", "r"),
        ("authorization", "Bearer t"),
        ("traceparent", TRACEPARENT),
        ("tracestate", "v=1"),
        ("grpc-timeout", "1S"),
        ("user-agent", "grpc-python"),
    ]
    ctx = build_context([*excluded, ("x-kept", "yes")], TRUSTING)
    assert ctx.passthrough == [("x-kept", "yes")]


def test_authorization_is_held_apart_from_passthrough() -> None:
    ctx = build_context([("authorization", "Bearer t")], TRUSTING)
    assert ctx.authorization == "Bearer t"
    assert ctx.passthrough == []


def test_authorization_is_unset_when_caller_sends_none() -> None:
    assert build_context([], TRUSTING).authorization is None


def test_target_hint_comes_from_sidecar_target() -> None:
    ctx = build_context([("sidecar-target", "backtest")], TRUSTING)
    assert ctx.target_hint == "backtest"
    assert ctx.passthrough == []


def test_target_hint_is_unset_without_sidecar_target() -> None:
    assert build_context([("x-tenant", "acme")], TRUSTING).target_hint is None
