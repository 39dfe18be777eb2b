"""MessageBound: gRPC length prefixes followed across chunks of any size."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sidecar.services.message_bound import MessageBound


def message(size: int) -> bytes:
    return b"\x00" + size.to_bytes(4, "big") + b"x" * size


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(0, 10), max_size=8), st.lists(st.integers(0, 10_000), max_size=20))
def test_messages_within_the_limit_pass_however_they_are_cut(sizes: list[int],
                                                             cuts: list[int]) -> None:
    bound = MessageBound(10)
    stream = b"".join(message(s) for s in sizes)
    assert not any(bound.over(chunk) for chunk in chunked(stream, cuts))
    assert bound.size == max(sizes, default=0)


@given(st.lists(st.integers(0, 10), max_size=8), st.integers(11, 100),
       st.lists(st.integers(0, 10_000), max_size=20))
def test_a_message_over_the_limit_is_found_at_its_prefix(sizes: list[int], big: int,
                                                         cuts: list[int]) -> None:
    bound = MessageBound(10)
    stream = b"".join(message(s) for s in sizes) + message(big)[:5]
    assert any(bound.over(chunk) for chunk in chunked(stream, cuts))
    assert bound.size == big
