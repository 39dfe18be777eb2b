"""One connection's HPACK state both ways, on jh2's Rust codec, failing as RFC 9113 asks.

jh2's decoder panics (a BaseException, with a Rust backtrace on stderr) instead of raising
HPACKError when a block ends inside an integer or before a string, so every block is first
checked to end on a representation boundary; a block of one-byte indexed fields (the steady
state of gRPC response headers and trailers) passes that check in one C call.

Encoding, a block may come in two parts: fields the same from call to call, and fields
`unique` to the call (ids, a trace context, the time left), which a table entry would never
serve again, and would evict what does. The unique ones are written here as literals
without indexing; the others go through jh2's encoder, and their block, once it leaves the
table as it was (all indexed: the steady state), is remembered and sent again with no call
into jh2 until the table changes. Every block jh2 encodes is checked for changes to the
table (the same one-call test as decoding, else `scan`), so a remembered block is never
one the peer's table would read differently.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import cast

# jh2 ships _hazmat.pyi but no py.typed marker, so mypy will not read it; our wrapper is typed.
from jh2._hazmat import (  # type: ignore[import-untyped]
    Decoder,
    Encoder,
    HPACKError,
    OversizedHeaderListError,
)

from sidecar.engine.errors import ConnectionViolation
from sidecar.engine.frames import ErrorCode

# Always sent never-indexed (RFC 7541 section 7.1.3: credentials must not be guessable).
SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})

# Huffman off: timed on a gRPC request block with jh2 5.0.15, encoding took the same time in
# the steady state (indexed fields) and about 15% less for new literals without Huffman; the
# ~20% fewer bytes it saves do not matter on a Unix socket.
HUFFMAN = False

# Bytes 0x80-0xFE are each a complete indexed field (0xFF starts a multi-byte index).
_ONE_BYTE_INDEXED = bytes(range(0x80, 0xFF))
# Remembered fixed parts per connection: one per distinct set of fixed fields (a method and
# its metadata); all forgotten when there are more (a caller whose metadata varies).
MAX_REMEMBERED = 64

Field = tuple[bytes, bytes, bool]


class HeaderCodec:
    """HPACK encoder and decoder of one connection."""

    __slots__ = ("_blocks", "_decoder", "_encoder", "_max_table", "_table", "generation")

    def __init__(self, max_header_list_size: int, max_encoder_table_size: int) -> None:
        self.generation = 0
        """Changes whenever a decoded block may have changed the decoder's table: a block
        that does not change it decodes to what it did before while this stays the same."""
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._encoder = Encoder()
        self._table = 0  # the same for the encoder's table: bumped by each block changing it
        self._blocks: dict[tuple[tuple[bytes, bytes], ...], tuple[int, bytes]] = {}
        self._max_table = max_encoder_table_size
        if max_encoder_table_size < self._encoder.header_table_size:
            self._encoder.header_table_size = max_encoder_table_size

    def decode(self, block: bytes) -> list[Field]:
        """Fields of a complete header block; ConnectionViolation if it cannot be decoded."""
        if block.translate(None, _ONE_BYTE_INDEXED):
            changes = scan(block)
            if changes is None:
                raise ConnectionViolation(ErrorCode.COMPRESSION_ERROR, "truncated header block")
            if changes:
                self.generation += 1
        try:
            return cast("list[Field]", self._decoder.decode(block, raw=True))
        except OversizedHeaderListError:
            raise ConnectionViolation(
                ErrorCode.ENHANCE_YOUR_CALM, "header list larger than advertised"
            ) from None
        except HPACKError:
            raise ConnectionViolation(ErrorCode.COMPRESSION_ERROR, "invalid header block") from None
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            if type(exc).__name__ != "PanicException":
                raise
            raise ConnectionViolation(ErrorCode.COMPRESSION_ERROR, "invalid header block") from None

    def encode(
        self, headers: Iterable[tuple[bytes, bytes]], never_indexed: Collection[bytes] = (),
        unique: Iterable[tuple[bytes, bytes]] = (),
    ) -> bytes:
        """One header block: `headers`, then the `unique` fields as literals without indexing
        (never-indexed if SENSITIVE); names in `never_indexed` or SENSITIVE are sent
        never-indexed. With `unique` fields, the block of `headers` may be a remembered one."""
        if not unique:
            return self._encode(headers, never_indexed)
        key = headers if isinstance(headers, tuple) else tuple(headers)
        blocks = self._blocks
        known = blocks.get(key)
        if known is not None and known[0] == self._table:
            block = known[1]
        else:
            table = self._table
            block = self._encode(key, never_indexed)
            if self._table == table and not never_indexed:  # the same block next time
                if len(blocks) >= MAX_REMEMBERED:
                    blocks.clear()
                blocks[key] = (table, block)
        return block + b"".join([literal(n, v, n in SENSITIVE) for n, v in unique])

    def _encode(self, headers: Iterable[tuple[bytes, bytes]],
                never_indexed: Collection[bytes]) -> bytes:
        if never_indexed:
            fields = [(n, v, n in SENSITIVE or n in never_indexed) for n, v in headers]
        else:
            fields = [(n, v, n in SENSITIVE) for n, v in headers]
        block: bytes = self._encoder.encode(fields, huffman=HUFFMAN)
        if block.translate(None, _ONE_BYTE_INDEXED) and scan(block):
            self._table += 1  # remembered blocks may now read differently
        return block

    def set_peer_table_size(self, size: int) -> None:
        """Apply the peer's SETTINGS_HEADER_TABLE_SIZE, capped by our own limit."""
        size = min(size, self._max_table)
        if size != self._encoder.header_table_size:
            self._encoder.header_table_size = size
            self._table += 1  # entries may be evicted, and the next block starts with the size


def literal(name: bytes, value: bytes, never_indexed: bool = False) -> bytes:
    """A literal field without indexing (RFC 7541 section 6.2.2) or never indexed (6.2.3),
    new name, no Huffman coding."""
    return b"".join((b"\x10" if never_indexed else b"\x00", _length(len(name)), name,
                     _length(len(value)), value))


def _length(n: int) -> bytes:
    """A string length: an integer with a 7-bit prefix, H = 0 (RFC 7541 section 5.1)."""
    if n < 0x7F:
        return bytes((n,))
    out = bytearray((0x7F,))
    n -= 0x7F
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def scan(block: bytes) -> bool | None:
    """None when a representation of the block (RFC 7541 section 6) does not end inside it;
    else whether the block changes the dynamic table (a literal with incremental indexing
    or a table size update; indexed fields and literals without indexing leave it as is)."""
    end = len(block)
    i = 0
    changes = False
    while i < end:
        first = block[i]
        if first & 0x80:  # indexed field, 7-bit index
            mask, strings = 0x7F, 0
        elif first & 0x40:  # literal with incremental indexing, 6-bit name index
            mask, strings = 0x3F, 1 if first & 0x3F else 2
            changes = True
        elif first & 0x20:  # dynamic table size update, 5-bit size
            mask, strings = 0x1F, 0
            changes = True
        else:  # literal without indexing or never indexed, 4-bit name index
            mask, strings = 0x0F, 1 if first & 0x0F else 2
        i += 1
        if first & mask == mask:
            while True:
                if i >= end:
                    return None
                i += 1
                if not block[i - 1] & 0x80:
                    break
        while strings:
            if i >= end:
                return None
            length = block[i] & 0x7F
            i += 1
            if length == 0x7F:
                shift = 0
                while True:
                    if i >= end or shift > 28:
                        return None
                    byte = block[i]
                    i += 1
                    length += (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
            i += length
            strings -= 1
        if i > end:
            return None
    return changes
