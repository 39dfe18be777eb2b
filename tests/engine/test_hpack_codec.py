"""Pins the jh2._hazmat API the engine relies on (not jh2's public face), and our wrapper."""

from __future__ import annotations

import pytest
from jh2._hazmat import Decoder, Encoder, HPACKError, OversizedHeaderListError

from sidecar.engine.errors import ConnectionViolation
from sidecar.engine.events import RequestReceived
from sidecar.engine.frames import ErrorCode
from sidecar.engine.hpack import HeaderCodec, scan
from tests.engine.wire import REQUEST, goaway_code, raw_frame, server


def fields(
    headers: list[tuple[bytes, bytes]], sensitive: bool = False
) -> list[tuple[bytes, bytes, bool]]:
    return [(n, v, sensitive) for n, v in headers]


def test_encoder_and_decoder_take_no_required_arguments() -> None:
    assert Encoder().header_table_size == 4096
    assert Decoder().header_table_size == 4096


def test_decoder_takes_max_header_list_size_in_its_constructor() -> None:
    assert Decoder(max_header_list_size=1234).max_header_list_size == 1234


def test_decode_raw_round_trips_encode_as_bytes_triples() -> None:
    block = Encoder().encode(fields(REQUEST), huffman=False)
    assert isinstance(block, bytes)
    assert Decoder().decode(block, raw=True) == fields(REQUEST)


def test_encode_with_huffman_decodes_the_same() -> None:
    block = Encoder().encode(fields(REQUEST), huffman=True)
    assert Decoder().decode(block, raw=True) == fields(REQUEST)


def test_dynamic_table_state_carries_across_blocks() -> None:
    encoder, decoder = Encoder(), Decoder()
    decoder.decode(encoder.encode(fields(REQUEST)), raw=True)
    second = encoder.encode(fields(REQUEST))
    assert len(second) < 10
    assert decoder.decode(second, raw=True) == fields(REQUEST)


def test_sensitive_fields_are_sent_never_indexed_and_decoded_as_sensitive() -> None:
    block = Encoder().encode([(b"authorization", b"secret", True)], huffman=False)
    assert block[0] & 0xF0 == 0x10  # literal never indexed (RFC 7541 6.2.3)
    assert Decoder().decode(block, raw=True) == [(b"authorization", b"secret", True)]


def test_encoder_header_table_size_setter_emits_a_size_update() -> None:
    encoder = Encoder()
    encoder.header_table_size = 0
    assert encoder.header_table_size == 0
    block = encoder.encode([(b"a", b"b", False)], huffman=False)
    assert block[0] & 0xE0 == 0x20  # dynamic table size update first (RFC 7541 6.3)


def test_encode_needs_triples() -> None:
    with pytest.raises(ValueError):
        Encoder().encode([(b"a", b"b")])  # type: ignore[list-item]


def test_decode_needs_bytes_not_memoryview() -> None:
    with pytest.raises(TypeError):
        Decoder().decode(memoryview(b"\x82"), raw=True)  # type: ignore[arg-type]


def test_invalid_block_raises_hpack_error() -> None:
    with pytest.raises(HPACKError):
        Decoder().decode(b"\x80", raw=True)  # index 0 is invalid


def test_oversized_header_list_raises_its_own_exception_type() -> None:
    block = Encoder().encode([(b"abc", b"defghijk", False)])
    decoder = Decoder(max_header_list_size=10)
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(block, raw=True)
    assert not issubclass(OversizedHeaderListError, HPACKError)


def test_header_list_size_counts_name_and_value_bytes_without_overhead() -> None:
    # Unlike RFC 9113's definition (32 bytes more per field): jh2 refuses a list only when its
    # names and values alone reach the limit, so it lets through a little more than advertised.
    block = Encoder().encode([(b"abc", b"defghijk", False)] * 2)  # 2 * 11 bytes
    assert Decoder(max_header_list_size=23).decode(block, raw=True)
    with pytest.raises(OversizedHeaderListError):
        Decoder(max_header_list_size=22).decode(block, raw=True)


def test_decoder_refuses_a_table_size_update_above_its_maximum() -> None:
    with pytest.raises(HPACKError):
        Decoder().decode(bytes.fromhex("3fe1ff03"), raw=True)


@pytest.mark.parametrize(
    "block",
    [
        b"\xff",  # indexed field whose integer continues past the end
        b"\xff\x80",
        b"\x40",  # literal with a new name, no name string
        b"\x40\x01a",  # ... no value string
        b"\x00\x7f",  # name length integer continues past the end
        b"\x3f",  # table size update whose integer continues past the end
    ],
)
def test_truncated_blocks_do_not_end_on_a_representation_boundary(block: bytes) -> None:
    assert scan(block) is None


@pytest.mark.parametrize("huffman", [True, False])
def test_encoded_blocks_end_on_a_representation_boundary(huffman: bool) -> None:
    encoder = Encoder()
    for _ in range(3):
        assert scan(encoder.encode(fields(REQUEST), huffman=huffman)) is not None
    long_value = [(b"x-long", b"v" * 300, False)]
    assert scan(encoder.encode(long_value, huffman=huffman)) is not None


def test_codec_refuses_truncated_blocks_without_reaching_the_rust_decoder() -> None:
    with pytest.raises(ConnectionViolation) as caught:
        HeaderCodec(16_384, 4096).decode(b"\x40\x01a")
    assert caught.value.error_code == ErrorCode.COMPRESSION_ERROR


def test_codec_turns_an_invalid_block_into_compression_error() -> None:
    with pytest.raises(ConnectionViolation) as caught:
        HeaderCodec(16_384, 4096).decode(b"\x80")
    assert caught.value.error_code == ErrorCode.COMPRESSION_ERROR


def test_codec_turns_an_oversized_list_into_enhance_your_calm() -> None:
    block = Encoder().encode([(b"x", b"y" * 100, False)])
    with pytest.raises(ConnectionViolation) as caught:
        HeaderCodec(64, 4096).decode(block)
    assert caught.value.error_code == ErrorCode.ENHANCE_YOUR_CALM


def test_codec_sends_authorization_never_indexed() -> None:
    block = HeaderCodec(16_384, 4096).encode([(b"authorization", b"Bearer x")])
    assert Decoder().decode(block, raw=True) == [(b"authorization", b"Bearer x", True)]


def test_codec_sends_requested_names_never_indexed() -> None:
    block = HeaderCodec(16_384, 4096).encode([(b"cookie", b"a"), (b"x", b"b")], {b"cookie"})
    assert Decoder().decode(block, raw=True) == [(b"cookie", b"a", True), (b"x", b"b", False)]


def test_codec_caps_the_peer_table_size() -> None:
    codec = HeaderCodec(16_384, 4096)
    codec.set_peer_table_size(1 << 30)
    codec.set_peer_table_size(100)
    decoder = Decoder()
    assert decoder.decode(codec.encode(REQUEST), raw=True) == fields(REQUEST)


def _request_block(*extra: bytes) -> bytes:
    # :method POST, :scheme http, :path / (static table 3, 6, 4), then the given fields
    return bytes([0x83, 0x86, 0x84]) + b"".join(extra)


def _literal_indexed(name: bytes, value: bytes) -> bytes:
    """A literal header field with incremental indexing, new name (RFC 7541 6.2.1)."""
    return bytes([0x40, len(name)]) + name + bytes([len(value)]) + value


def test_a_repeated_indexed_block_decodes_under_the_table_of_its_time() -> None:
    """The engine remembers blocks of indexed fields decoded; the same bytes after the
    table changed must decode to the table's new entry, not the remembered one."""
    conn = server()
    first_entry = bytes([0xBE])  # dynamic table index 62: the newest entry
    blocks = [
        _request_block(_literal_indexed(b"x-a", b"1")),
        _request_block(first_entry),
        _request_block(first_entry),  # the same bytes, nothing changed: x-a again
        _request_block(_literal_indexed(b"x-b", b"2")),
        _request_block(first_entry),  # the same bytes again, now meaning x-b
    ]
    seen = []
    for i, block in enumerate(blocks):
        frame = raw_frame(0x1, 0x4 | 0x1, 2 * i + 1, block)  # HEADERS, END_HEADERS|END_STREAM
        [event] = [e for e in conn.receive(frame) if isinstance(e, RequestReceived)]
        seen.append([kv for kv in event.headers if kv[0].startswith(b"x-")])
    assert seen == [[(b"x-a", b"1")], [(b"x-a", b"1")], [(b"x-a", b"1")],
                    [(b"x-b", b"2")], [(b"x-b", b"2")]]


def test_a_remembered_block_is_not_reused_after_the_table_was_emptied() -> None:
    conn = server()
    blocks = [_request_block(_literal_indexed(b"x-a", b"1")),
              _request_block(bytes([0xBE])),
              bytes([0x20]) + _request_block(),  # dynamic table size update to 0: evicts all
              _request_block(bytes([0xBE]))]  # index 62 names nothing now
    events = [conn.receive(raw_frame(0x1, 0x5, 2 * i + 1, block))
              for i, block in enumerate(blocks)]
    assert [type(e).__name__ for e in events[-1]] == ["ConnectionTerminated"]
    assert goaway_code(conn) == ErrorCode.COMPRESSION_ERROR


# -- the encoder's two parts: remembered fixed fields, unique literals ------------------------

_FIXED = ((b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Svc/Call"),
          (b":authority", b"up"), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
          (b"x-sidecar-user", b"svc-a"))


def _ids(i: int) -> list[tuple[bytes, bytes]]:
    return [(b"correlation-id", b"c%032d" % i), (b"traceparent", b"00-%032d-%016d-01" % (i, i)),
            (b"grpc-timeout", b"%du" % (999_000 + i))]


def test_unique_fields_stay_out_of_the_table_and_the_fixed_block_is_sent_again() -> None:
    codec, decoder = HeaderCodec(16_384, 4096), Decoder()
    blocks = []
    for i in range(200):
        block = codec.encode(_FIXED, (), _ids(i))
        assert decoder.decode(block, raw=True) == [*fields(list(_FIXED)), *fields(_ids(i))]
        blocks.append(block)
    # From the second call on, the fixed fields are the same one-byte indexes (200 ids
    # with incremental indexing would have evicted them from a 4 KiB table again and again).
    prefix = blocks[1][:len(_FIXED)]
    assert not prefix.translate(None, bytes(range(0x80, 0xFF)))
    assert all(block.startswith(prefix) for block in blocks[1:])
    assert blocks[5][len(_FIXED)] == 0x00  # a unique field: literal without indexing, new name


def test_a_remembered_block_is_encoded_afresh_once_the_table_changed() -> None:
    codec, decoder = HeaderCodec(16_384, 4096), Decoder()

    def call(fixed: tuple[tuple[bytes, bytes], ...], i: int) -> None:
        block = codec.encode(fixed, (), _ids(i))
        assert decoder.decode(block, raw=True) == [*fields(list(fixed)), *fields(_ids(i))]

    call(_FIXED, 0)
    call(_FIXED, 1)  # remembered from here
    for i in range(60):  # other blocks add entries: the remembered indexes shift
        assert decoder.decode(codec.encode([(b"x-new", b"%d" % i)]), raw=True) == [
            (b"x-new", b"%d" % i, False)]
        call(_FIXED, i + 2)
    codec.set_peer_table_size(0)  # the peer empties its table: every entry is gone
    call(_FIXED, 100)
    call(_FIXED, 101)
    codec.set_peer_table_size(4096)
    for i in range(3):
        call(_FIXED, 200 + i)


def test_unique_lengths_take_more_than_one_byte_and_authorization_is_never_indexed() -> None:
    codec = HeaderCodec(16_384, 4096)
    long = b"v" * 70_000
    block = codec.encode(_FIXED, (), [(b"x-long", long), (b"authorization", b"Bearer s")])
    assert Decoder(max_header_list_size=1 << 20).decode(block, raw=True) == [
        *fields(list(_FIXED)), (b"x-long", long, False), (b"authorization", b"Bearer s", True)]


def test_any_mix_of_fixed_unique_and_table_changes_decodes_as_sent() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    name = st.sampled_from([b"x-a", b"x-b", b"content-type", b"user-agent", b"authorization"])
    value = st.binary(min_size=0, max_size=300)
    pair = st.tuples(name, value)
    op = st.one_of(
        st.tuples(st.just("block"), st.sampled_from([0, 1, 2]), st.lists(pair, max_size=3)),
        st.tuples(st.just("plain"), st.lists(pair, max_size=4)),
        st.tuples(st.just("size"), st.sampled_from([0, 64, 300, 4096])),
    )
    fixed_sets = [_FIXED, _FIXED[:3], ((b":status", b"200"), (b"x-a", b"1"))]

    @settings(max_examples=300, deadline=None)
    @given(st.lists(op, max_size=40))
    def run(ops: list[tuple]) -> None:  # type: ignore[type-arg]
        codec, decoder = HeaderCodec(1 << 20, 4096), Decoder(max_header_list_size=1 << 20)
        for o in ops:
            if o[0] == "size":
                codec.set_peer_table_size(o[1])  # the decoder allows 4096: the size updates
                continue  # the blocks carry (jh2 signals every size set, not just the least)
            if o[0] == "plain":
                sent: list[tuple[bytes, bytes]] = o[1]
                block = codec.encode(sent)
            else:
                fixed, unique = fixed_sets[o[1]], o[2]
                sent = [*fixed, *unique]
                block = codec.encode(fixed, (), unique)
            got = decoder.decode(block, raw=True)
            assert [(n, v) for n, v, _ in got] == sent

    run()
