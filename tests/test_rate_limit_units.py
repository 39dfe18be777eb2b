"""Token buckets and a listener's gate, sans-I/O: every decision with a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.admission import Gate
from sidecar.config import Identity, Listener, PeerRule, RateLimit
from sidecar.context import build_context
from sidecar.engine.peer import Peer
from sidecar.errors import PermissionDeniedError, RateLimitedError, UnauthenticatedError
from sidecar.resilience.rate_limit import RateLimiter, TokenBucket, pushback_ms


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the bucket ---------------------------------------------------------------------------


def test_bucket_lets_its_burst_through_then_says_when_the_next_token_is_free() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    assert [bucket.acquire(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.acquire(0.0) == 0.1
    assert abs(bucket.acquire(0.04) - 0.06) < 1e-9  # refused: nothing spent
    assert bucket.acquire(0.1) == 0.0
    assert bucket.acquire(0.1) > 0


def test_bucket_saves_no_more_than_its_burst_however_long_it_idles() -> None:
    bucket = TokenBucket(rate=100.0, burst=2.0, now=0.0)
    assert [bucket.acquire(1e6) == 0.0 for _ in range(3)] == [True, True, False]


def test_bucket_refills_nothing_when_the_clock_goes_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.acquire(10.0) == 0.0
    assert bucket.acquire(5.0) > 0
    assert bucket.acquire(11.0) == 0.0


@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=200),
       st.floats(min_value=0.5, max_value=50.0), st.integers(min_value=1, max_value=20))
def test_calls_admitted_never_exceed_burst_plus_rate_times_elapsed(
        gaps: list[float], rate: float, burst: int) -> None:
    bucket = TokenBucket(rate, float(burst), now=0.0)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += bucket.acquire(now) == 0.0
        assert admitted <= burst + rate * now + 1e-6


def test_pushback_is_whole_milliseconds_rounded_up_and_never_zero() -> None:
    assert pushback_ms(0.1) == 100
    assert pushback_ms(0.0101) == 11
    assert pushback_ms(1e-9) == 1
    assert pushback_ms(2.5) == 2500


# -- the limiter ---------------------------------------------------------------------------


def test_per_listener_limit_is_one_bucket_whoever_calls() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, per_caller=False, now=0.0)
    assert limiter.acquire("alice", 0.0) == 0.0
    assert limiter.acquire("bob", 0.0) == 0.0
    assert limiter.acquire(1000, 0.0) == 1.0
    assert len(limiter) == 0  # no per-caller state at all


def test_per_caller_limit_gives_each_caller_its_own_burst() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, per_caller=True, now=0.0)
    assert [limiter.acquire("alice", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert [limiter.acquire(1000, 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert limiter.acquire("alice", 1.0) == 0.0


def test_idle_callers_buckets_are_forgotten_once_they_would_be_full_again() -> None:
    limiter = RateLimiter(rate=10.0, burst=5, per_caller=True, now=0.0)  # full after 0.5 s
    for uid in range(1000):
        limiter.acquire(uid, 0.0)
    assert len(limiter) == 1000
    limiter.acquire("late", 0.6)  # a new caller after the refill period sweeps
    assert len(limiter) == 1


def test_a_forgotten_bucket_changes_no_decision() -> None:
    """Forgotten only when full: the caller comes back to the burst it would have had."""
    limiter = RateLimiter(rate=10.0, burst=2, per_caller=True, now=0.0)
    assert [limiter.acquire("a", 0.0) for _ in range(2)] == [0.0, 0.0]
    limiter.acquire("b", 0.3)  # sweeps: a's bucket is full again (0.2 s to refill)
    assert len(limiter) == 1
    assert [limiter.acquire("a", 0.3) == 0.0 for _ in range(3)] == [True, True, False]


def test_a_spent_bucket_is_kept_while_it_is_not_full() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, per_caller=True, now=0.0)
    limiter.acquire("a", 0.0)
    limiter.acquire("a", 0.0)
    limiter.acquire("b", 2.5)  # swept at 2.0+: a was last refilled at 0.0, full at 2.0
    limiter.acquire("a", 2.5)
    limiter.acquire("a", 2.5)
    limiter.acquire("c", 4.1)  # sweep at 4.1: a's bucket (refilled at 2.5) is not full yet
    assert limiter.acquire("a", 4.1) == 0.0
    assert limiter.acquire("a", 4.1) > 0  # 1.6 tokens refilled, one spent above


def test_memory_stays_bounded_under_more_active_callers_than_the_cap() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, per_caller=True, now=0.0, max_callers=100)
    for uid in range(10_000):
        limiter.acquire(uid, uid * 1e-6)  # all within one refill period: none is full
        assert len(limiter) <= 100
    assert limiter.acquire(9_999, 0.01) > 0  # the newest are the ones kept (spent)
    assert limiter.acquire(0, 0.01) == 0.0  # the oldest was forgotten: a full bucket


# -- the gate ------------------------------------------------------------------------------

PEERS = (PeerRule("svc-orders", uid=1000), PeerRule("batch-jobs", gid=2000))


def _listener(**fields: object) -> Listener:
    return Listener("app", "/tmp/app.sock", **fields)  # type: ignore[arg-type]


def test_an_unmapped_peer_on_a_rejecting_listener_is_denied_naming_uid_and_listener() -> None:
    identity = Identity(peers=PEERS, unknown_peer="reject")
    gate = Gate(_listener(identity=identity))
    ctx = build_context([("x-user-id", "svc-orders")], identity, Peer(1234, 1234, 77))
    try:
        gate.admit(ctx)
    except PermissionDeniedError as e:
        assert "uid 1234" in str(e) and "'app'" in str(e)
    else:
        raise AssertionError("admitted")


def test_a_peer_matched_by_gid_is_admitted_under_the_gids_user() -> None:
    identity = Identity(peers=PEERS, unknown_peer="reject")
    ctx = build_context([("x-user-id", "root")], identity, Peer(5, 2000, 1))
    Gate(_listener(identity=identity)).admit(ctx)
    assert ctx.user_id == "batch-jobs"


def test_first_matching_peer_rule_wins() -> None:
    identity = Identity(peers=(PeerRule("by-gid", gid=2000), PeerRule("by-uid", uid=1000)))
    assert build_context([], identity, Peer(1000, 2000, 1)).user_id == "by-gid"


def test_an_unmapped_peer_on_an_allowing_listener_keeps_the_callers_claim() -> None:
    identity = Identity(peers=PEERS, unknown_peer="allow")
    ctx = build_context([("x-user-id", "carol")], identity, Peer(1234, 1234, 1))
    Gate(_listener(identity=identity)).admit(ctx)
    assert ctx.user_id == "carol"


def test_no_peer_credentials_on_a_rejecting_listener_is_denied() -> None:
    identity = Identity(unknown_peer="reject")
    try:
        Gate(_listener(identity=identity)).admit(build_context([], identity, None))
    except PermissionDeniedError as e:
        assert "SO_PEERCRED" in str(e)
    else:
        raise AssertionError("admitted")


def test_required_user_is_still_unauthenticated_without_one() -> None:
    identity = Identity(require_user=True)
    try:
        Gate(_listener(identity=identity)).admit(build_context([], identity, Peer(1, 1, 1)))
    except UnauthenticatedError:
        pass
    else:
        raise AssertionError("admitted")


def test_over_the_rate_limit_is_resource_exhausted_with_pushback_to_the_next_token() -> None:
    clock = Clock()
    gate = Gate(_listener(rate_limit=RateLimit(rate=4.0, burst=2)), clock=clock)
    identity = Identity()
    for _ in range(2):
        gate.admit(build_context([], identity, Peer(1, 1, 1)))
    try:
        gate.admit(build_context([], identity, Peer(1, 1, 1)))
    except RateLimitedError as e:
        assert e.trailers == (("grpc-retry-pushback-ms", "250"),)
        assert "'app'" in str(e) and "rate_limit" in str(e)
    else:
        raise AssertionError("admitted")
    clock.now += 0.25
    gate.admit(build_context([], identity, Peer(1, 1, 1)))


def _spent_by(gate: Gate, identity: Identity, metadata: list[tuple[str, str | bytes]],
              peer: Peer) -> bool:
    """True when this call is refused (its caller's bucket is empty)."""
    try:
        gate.admit(build_context(metadata, identity, peer))
    except RateLimitedError:
        return True
    return False


def test_per_caller_buckets_follow_the_mapped_user_id_not_the_uid() -> None:
    identity = Identity(peers=(PeerRule("svc", uid=1000), PeerRule("svc", uid=1001)))
    gate = Gate(_listener(identity=identity,
                          rate_limit=RateLimit(rate=1.0, burst=1, per="caller")), clock=Clock())
    assert not _spent_by(gate, identity, [], Peer(1000, 1000, 1))
    assert _spent_by(gate, identity, [], Peer(1001, 1001, 2))  # the same user id
    assert not _spent_by(gate, identity, [], Peer(0, 0, 3))  # unmapped: its uid


def test_per_caller_buckets_follow_the_uid_where_claims_are_not_trusted() -> None:
    identity = Identity(trust_caller=False)
    gate = Gate(_listener(identity=identity,
                          rate_limit=RateLimit(rate=1.0, burst=1, per="caller")), clock=Clock())
    assert not _spent_by(gate, identity, [("x-user-id", "a")], Peer(1000, 1000, 1))
    assert _spent_by(gate, identity, [("x-user-id", "b")], Peer(1000, 1000, 1))
    assert not _spent_by(gate, identity, [("x-user-id", "a")], Peer(1001, 1001, 1))


def test_per_caller_buckets_follow_a_trusted_claimed_user_id() -> None:
    identity = Identity()
    gate = Gate(_listener(rate_limit=RateLimit(rate=1.0, burst=1, per="caller")),
                clock=Clock())
    assert not _spent_by(gate, identity, [("x-user-id", "alice")], Peer(0, 0, 1))
    assert _spent_by(gate, identity, [("x-user-id", "alice")], Peer(0, 0, 1))
    assert not _spent_by(gate, identity, [("x-user-id", "bob")], Peer(0, 0, 1))


def test_a_reload_keeps_the_buckets_of_an_unchanged_limit_and_resets_a_changed_one() -> None:
    limit = RateLimit(rate=1.0, burst=1)
    old = Gate(_listener(rate_limit=limit), clock=Clock())
    assert old.limiter is not None
    same = Gate(_listener(rate_limit=limit, default_target="x"), previous=old)
    assert same.limiter is old.limiter
    changed = Gate(_listener(rate_limit=RateLimit(rate=2.0, burst=1)), previous=old)
    assert changed.limiter is not old.limiter
