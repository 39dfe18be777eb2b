"""RFC 9113 frame constants and the 9-byte header, packed and unpacked without frame objects."""

from __future__ import annotations

import struct
from enum import IntEnum

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME_SIZE = 16_384
MAX_MAX_FRAME_SIZE = 2**24 - 1
DEFAULT_HEADER_TABLE_SIZE = 4_096
MAX_STREAM_ID = 2**31 - 1


class FrameType(IntEnum):
    """Frame types of RFC 9113 section 6; any other type is ignored on receipt."""

    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class ErrorCode(IntEnum):
    """Error codes of RFC 9113 section 7 (a peer may send others: keep them as plain ints)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class SettingId(IntEnum):
    """SETTINGS parameters of RFC 9113 section 6.5.2; unknown ones are ignored."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


# Plain ints for the send path (an IntEnum attribute lookup costs more than the packing).
_HEADERS = int(FrameType.HEADERS)
_CONTINUATION = int(FrameType.CONTINUATION)
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
_RST_STREAM = int(FrameType.RST_STREAM)

# Flags (RFC 9113 section 6); END_STREAM and ACK share a bit on different frame types.
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# 24-bit length as 16 + 8 bits, type, flags, R bit + 31-bit stream id.
_HEADER = struct.Struct(">HBBBL")
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_FOUR_BYTE_FRAME = struct.Struct(">HBBBLL")  # header + one 32-bit field

unpack_header = _HEADER.unpack_from
"""unpack_header(buffer, offset) -> (length_high16, length_low8, type, flags, stream_id_with_R)."""
unpack_u32 = _U32.unpack_from
unpack_goaway = _GOAWAY.unpack_from


def frame_header(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte header of one frame."""
    return _HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id)


def parse_header(buffer: bytes, offset: int = 0) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the header at offset; the reserved bit is dropped."""
    high, low, frame_type, flags, stream_id = _HEADER.unpack_from(buffer, offset)
    return high << 8 | low, frame_type, flags, stream_id & MAX_STREAM_ID


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """(identifier, value) pairs of a SETTINGS payload whose length is a multiple of 6."""
    return list(_SETTING.iter_unpack(payload))


def settings_frame(settings: list[tuple[int, int]]) -> bytes:
    """A SETTINGS frame carrying these values in order."""
    payload = b"".join([_SETTING.pack(identifier, value) for identifier, value in settings])
    return frame_header(len(payload), FrameType.SETTINGS, 0, 0) + payload


SETTINGS_ACK = frame_header(0, FrameType.SETTINGS, FLAG_ACK, 0)


def ping_frame(opaque: bytes, ack: bool = False) -> bytes:
    """A PING (or PING ACK) frame with its 8 opaque bytes."""
    return frame_header(8, FrameType.PING, FLAG_ACK if ack else 0, 0) + opaque


def goaway_frame(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame naming the last stream processed."""
    header = frame_header(8 + len(debug), FrameType.GOAWAY, 0, 0)
    return header + _GOAWAY.pack(last_stream_id, error_code) + debug


def rst_stream_frame(stream_id: int, error_code: int) -> bytes:
    """A RST_STREAM frame."""
    return _FOUR_BYTE_FRAME.pack(0, 4, _RST_STREAM, 0, stream_id, error_code)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame (stream 0 for the connection window)."""
    return _FOUR_BYTE_FRAME.pack(0, 4, _WINDOW_UPDATE, 0, stream_id, increment)


def header_block_frames(
    stream_id: int, block: bytes, end_stream: bool, max_frame_size: int
) -> list[bytes]:
    """HEADERS then CONTINUATION frames carrying one encoded header block, none over the limit."""
    flags = FLAG_END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        header = frame_header(len(block), _HEADERS, flags | FLAG_END_HEADERS, stream_id)
        return [header + block]
    frames = [frame_header(max_frame_size, _HEADERS, flags, stream_id)]
    frames.append(block[:max_frame_size])
    position = max_frame_size
    while position < len(block):
        chunk = block[position : position + max_frame_size]
        position += len(chunk)
        last = FLAG_END_HEADERS if position >= len(block) else 0
        frames.append(frame_header(len(chunk), _CONTINUATION, last, stream_id))
        frames.append(chunk)
    return frames
