"""Frame constants and the header/payload helpers of sidecar.engine.frames."""

from __future__ import annotations

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from sidecar.engine import frames
from sidecar.engine.frames import ErrorCode, FrameType, SettingId
from tests.engine.wire import parse, raw_frame


def test_frame_types_have_their_rfc_9113_numbers() -> None:
    assert [t.value for t in FrameType] == list(range(10))
    assert FrameType.CONTINUATION == 0x9


def test_error_codes_have_their_rfc_9113_numbers() -> None:
    assert ErrorCode.NO_ERROR == 0x0
    assert ErrorCode.FLOW_CONTROL_ERROR == 0x3
    assert ErrorCode.ENHANCE_YOUR_CALM == 0xB
    assert ErrorCode.HTTP_1_1_REQUIRED == 0xD


def test_setting_ids_have_their_rfc_9113_numbers() -> None:
    assert [s.value for s in SettingId] == [1, 2, 3, 4, 5, 6]


def test_preface_is_the_rfc_client_magic() -> None:
    assert frames.PREFACE == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert len(frames.PREFACE) == 24


def test_frame_header_packs_24_bit_length_type_flags_and_stream() -> None:
    header = frames.frame_header(0x123456, 0x1, 0x25, 7)
    assert header == bytes.fromhex("123456") + b"\x01\x25" + (7).to_bytes(4, "big")


def test_parse_header_round_trips_frame_header() -> None:
    header = frames.frame_header(16_777_215, 0x9, 0x4, 2**31 - 1)
    assert frames.parse_header(header) == (16_777_215, 0x9, 0x4, 2**31 - 1)


def test_parse_header_drops_the_reserved_bit() -> None:
    header = raw_frame(0x0, 0, 0x80000003)
    assert frames.parse_header(header)[3] == 3


def test_parse_header_reads_at_an_offset() -> None:
    buffer = b"junk" + frames.frame_header(5, 0x6, 0x1, 0)
    assert frames.parse_header(buffer, 4) == (5, 0x6, 0x1, 0)


def test_unpack_header_gives_length_in_two_parts() -> None:
    high, low, frame_type, flags, stream_id = frames.unpack_header(
        frames.frame_header(0x010203, 0x0, 0x1, 5), 0
    )
    assert (high << 8 | low, frame_type, flags, stream_id) == (0x010203, 0, 1, 5)


def test_settings_frame_is_read_by_hyperframe() -> None:
    data = frames.settings_frame([(SettingId.INITIAL_WINDOW_SIZE, 1 << 20), (0x99, 7)])
    (frame,) = parse(data)
    assert isinstance(frame, SettingsFrame)
    assert frame.settings == {4: 1 << 20, 0x99: 7}


def test_parse_settings_keeps_order_and_duplicates() -> None:
    payload = bytes(SettingsFrame(0, settings={1: 10}).serialize())[9:] * 2
    assert frames.parse_settings(payload) == [(1, 10), (1, 10)]


def test_settings_ack_is_an_empty_settings_frame_with_ack() -> None:
    (frame,) = parse(frames.SETTINGS_ACK)
    assert isinstance(frame, SettingsFrame)
    assert "ACK" in frame.flags
    assert frame.body_len == 0


def test_ping_frame_carries_its_opaque_bytes_and_ack_flag() -> None:
    (frame,) = parse(frames.ping_frame(b"abcdefgh", ack=True))
    assert isinstance(frame, PingFrame)
    assert frame.opaque_data == b"abcdefgh"
    assert "ACK" in frame.flags


def test_goaway_frame_carries_last_stream_code_and_debug() -> None:
    (frame,) = parse(frames.goaway_frame(9, ErrorCode.ENHANCE_YOUR_CALM, b"calm"))
    assert isinstance(frame, GoAwayFrame)
    assert (frame.last_stream_id, frame.error_code, frame.additional_data) == (9, 0xB, b"calm")


def test_rst_stream_frame_carries_its_code() -> None:
    (frame,) = parse(frames.rst_stream_frame(3, ErrorCode.CANCEL))
    assert isinstance(frame, RstStreamFrame)
    assert (frame.stream_id, frame.error_code) == (3, 0x8)


def test_window_update_frame_carries_its_increment() -> None:
    (frame,) = parse(frames.window_update_frame(0, 2**31 - 1))
    assert isinstance(frame, WindowUpdateFrame)
    assert (frame.stream_id, frame.window_increment) == (0, 2**31 - 1)


def test_small_header_block_is_one_headers_frame_with_end_headers() -> None:
    (frame,) = parse(b"".join(frames.header_block_frames(1, b"abc", True, 16_384)))
    assert isinstance(frame, HeadersFrame)
    assert frame.data == b"abc"
    assert {"END_HEADERS", "END_STREAM"} <= set(frame.flags)


def test_header_block_exactly_max_frame_size_needs_no_continuation() -> None:
    (frame,) = parse(b"".join(frames.header_block_frames(1, b"x" * 16_384, False, 16_384)))
    assert "END_HEADERS" in frame.flags


def test_large_header_block_is_split_into_continuation_frames() -> None:
    block = bytes(range(256)) * 100  # 25,600 bytes
    parsed = parse(b"".join(frames.header_block_frames(5, block, True, 16_384)))
    assert [type(f) for f in parsed] == [HeadersFrame, ContinuationFrame]
    assert b"".join(f.data for f in parsed) == block
    assert "END_STREAM" in parsed[0].flags and "END_HEADERS" not in parsed[0].flags
    assert "END_HEADERS" in parsed[1].flags
    assert all(f.body_len <= 16_384 for f in parsed)


@pytest.mark.parametrize("size", [1, 2, 3, 10])
def test_header_block_splits_by_the_given_frame_size(size: int) -> None:
    parsed = parse(b"".join(frames.header_block_frames(1, b"0123456789", False, size)))
    assert len(parsed) == -(-10 // size)
    assert b"".join(f.data for f in parsed) == b"0123456789"
    assert ["END_HEADERS" in f.flags for f in parsed] == [False] * (len(parsed) - 1) + [True]
