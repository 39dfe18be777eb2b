"""Protection limits and advertised settings of one HTTP/2 connection, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.engine.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    MAX_MAX_FRAME_SIZE,
    MAX_WINDOW,
)


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Everything a peer is allowed before the engine refuses it; plain values after __init__."""

    max_header_list_size: int = 16_384
    """Advertised SETTINGS_MAX_HEADER_LIST_SIZE, and the bound on an encoded header block: past it
    the connection ends with ENHANCE_YOUR_CALM as soon as the bytes arrive (never buffered)."""

    max_concurrent_streams: int = 256
    """Advertised SETTINGS_MAX_CONCURRENT_STREAMS; a peer stream past it gets REFUSED_STREAM."""

    max_resets_per_second: float = 200.0
    """Peer-caused stream resets (RST_STREAM received, streams we refuse or reset for its errors)
    allowed per second, with a burst of one second's worth; past it GOAWAY ENHANCE_YOUR_CALM."""

    max_pending_control_frames: int = 1_000
    """Frames the peer made us queue (PING and SETTINGS ACKs, RST_STREAM answers) not yet taken
    by data_to_send(); past it the peer is flooding without reading: GOAWAY ENHANCE_YOUR_CALM."""

    initial_window: int = 4 * 1024 * 1024
    """Advertised SETTINGS_INITIAL_WINDOW_SIZE: what a peer may send on a stream before the
    application acknowledges it (large for throughput; memory per stream is bounded by it)."""

    connection_window: int = 16 * 1024 * 1024
    """Receive window of the whole connection, raised from 65,535 by a WINDOW_UPDATE at start."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    """Advertised SETTINGS_MAX_FRAME_SIZE; a larger frame is a FRAME_SIZE_ERROR before buffering."""

    max_settings_entries: int = 32
    """Parameters allowed in one SETTINGS frame (RFC 9113 defines six); more: ENHANCE_YOUR_CALM."""

    max_empty_frames: int = 100
    """Consecutive empty DATA / CONTINUATION frames without END flags (legal but useless work
    for us) before ENHANCE_YOUR_CALM."""

    max_encoder_table_size: int = 4_096
    """Cap on the HPACK dynamic table our encoder keeps, whatever the peer's HEADER_TABLE_SIZE."""

    closed_stream_memory: int = 256
    """Stream ids we reset that are remembered, so the peer's late frames on them are dropped
    quietly (RFC 9113 section 5.1) instead of answered with STREAM_CLOSED."""

    def __post_init__(self) -> None:
        _at_least("max_header_list_size", self.max_header_list_size, 1)
        _at_least("max_concurrent_streams", self.max_concurrent_streams, 0)
        if not self.max_resets_per_second > 0:
            raise ValueError("max_resets_per_second must be > 0")
        _at_least("max_pending_control_frames", self.max_pending_control_frames, 1)
        _between("initial_window", self.initial_window, 0, MAX_WINDOW)
        _between("connection_window", self.connection_window, DEFAULT_WINDOW, MAX_WINDOW)
        _between("max_frame_size", self.max_frame_size, DEFAULT_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE)
        _at_least("max_settings_entries", self.max_settings_entries, 6)
        _at_least("max_empty_frames", self.max_empty_frames, 1)
        _at_least("max_encoder_table_size", self.max_encoder_table_size, 0)
        _at_least("closed_stream_memory", self.closed_stream_memory, 0)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _between(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high}, got {value}")
