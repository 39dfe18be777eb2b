"""gRPC message sizes on a byte stream: the 5-byte length prefixes, read across DATA frames.

The proxy passes messages through untouched; this only follows their prefixes so that a
message over `limits.max_message` is refused as soon as its prefix arrives.
"""

from __future__ import annotations

import struct

PREFIX = 5  # compressed flag (1 byte), length (4 bytes, big-endian)
_LENGTH = struct.Struct(">I")


class MessageBound:
    """Follows one direction of one stream; `over(chunk)` says whether a message in it
    announced a length past `limit`; `size` is the largest length announced so far."""

    __slots__ = ("_head", "_left", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._left = 0  # bytes of the current message body still to come
        self._head = b""  # a prefix split across chunks

    def over(self, chunk: memoryview | bytes) -> bool:
        end = len(chunk)
        position = 0
        left = self._left
        while left < end - position:
            position += left
            if not self._head and end - position >= PREFIX:  # the prefix whole, in place
                left = _LENGTH.unpack_from(chunk, position + 1)[0]
                position += PREFIX
            else:
                need = PREFIX - len(self._head)
                head = self._head + bytes(chunk[position:position + need])
                if len(head) < PREFIX:
                    self._head, self._left = head, 0
                    return False
                self._head = b""
                position += need
                left = int.from_bytes(head[1:], "big")
            if left > self.size:
                self.size = left
                if left > self.limit:
                    return True
        self._left = left - (end - position)
        return False
