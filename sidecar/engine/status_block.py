"""A gRPC status as the header block that carries it (trailers, or trailers-only)."""

from __future__ import annotations

from sidecar.engine.events import Headers

# Characters of a status message sent: the daemon's messages are short, but one may quote
# a caller's text, and a status must fit the caller's header list size (16 KiB in grpcio).
MAX_MESSAGE = 1024


def error_block(code: int, message: str, headers_sent: bool,
                extra: Headers | None = None) -> Headers:
    """A gRPC status as trailers, or as a trailers-only response when no headers went out."""
    block: Headers = [] if headers_sent else [
        (b":status", b"200"), (b"content-type", b"application/grpc")]
    block.append((b"grpc-status", b"%d" % code))
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE - 3] + "..."
    block.append((b"grpc-message", percent_encode(message)))
    if extra:
        block.extend(extra)
    return block


def percent_encode(text: str) -> bytes:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte %XX."""
    out = bytearray()
    for byte in text.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)
