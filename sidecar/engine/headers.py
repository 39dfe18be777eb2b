"""Checks of received header blocks (RFC 9113 sections 8.2 and 8.3), enough for a proxy.

Each check takes decoded (name, value, never_indexed) fields and returns the headers as
(name, value) pairs plus the never-indexed names, or raises MalformedHeaders: the engine
answers that with a PROTOCOL_ERROR stream error.
"""

from __future__ import annotations

from sidecar.engine.events import NO_NAMES, Headers
from sidecar.engine.hpack import Field

CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
RESPONSE_PSEUDO = frozenset({b":status"})
NO_PSEUDO: frozenset[bytes] = frozenset()

# Section 8.2.1: a regular name has no controls, space, uppercase, DEL, non-ASCII or colon;
# a value has no NUL, CR or LF, nor a space or tab at either end. Bytes are checked over the
# joined names and values by a C-level translate (deleting the allowed ones leaves nothing).
_NAME_CHARS = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_VALUE_CHARS = bytes(c for c in range(256) if c not in (0x00, 0x0A, 0x0D))
_WHITESPACE = (0x20, 0x09)


class MalformedHeaders(Exception):
    """A header block that makes its request or response malformed (section 8.1.1)."""


def request_headers(fields: list[Field]) -> tuple[Headers, frozenset[bytes]]:
    """Headers of a request block: pseudo-headers first, :method, :scheme, :path present."""
    headers, pseudo, never_indexed = _collect(fields, REQUEST_PSEUDO)
    method = pseudo.get(b":method")
    if method is None:
        raise MalformedHeaders("request without :method")
    if method == b"CONNECT":
        if b":authority" not in pseudo or b":scheme" in pseudo or b":path" in pseudo:
            raise MalformedHeaders("CONNECT request needs :authority only")
    elif b":scheme" not in pseudo or b":path" not in pseudo:
        raise MalformedHeaders("request without :scheme or :path")
    elif not pseudo[b":path"]:
        raise MalformedHeaders("request with an empty :path")
    return headers, never_indexed


def response_headers(fields: list[Field]) -> tuple[Headers, frozenset[bytes], bool]:
    """Headers of a response block and whether it is informational (1xx)."""
    headers, pseudo, never_indexed = _collect(fields, RESPONSE_PSEUDO)
    status = pseudo.get(b":status")
    if status is None:
        raise MalformedHeaders("response without :status")
    if len(status) != 3 or not status.isdigit():
        raise MalformedHeaders("response with an invalid :status")
    return headers, never_indexed, status[0] == 0x31


def trailer_headers(fields: list[Field]) -> tuple[Headers, frozenset[bytes]]:
    """Headers of a trailer block: no pseudo-header at all."""
    headers, _, never_indexed = _collect(fields, NO_PSEUDO)
    return headers, never_indexed


def _collect(
    fields: list[Field], allowed: frozenset[bytes]
) -> tuple[Headers, dict[bytes, bytes], frozenset[bytes]]:
    headers: Headers = []
    append = headers.append
    pseudo: dict[bytes, bytes] = {}
    names: list[bytes] = []
    values: list[bytes] = []
    hidden: list[bytes] | None = None
    malformed = ""
    for name, value, never_indexed in fields:
        if name[:1] == b":":
            if names:
                malformed = "pseudo-header after a regular header"
            elif name not in allowed:
                malformed = "unknown or misplaced pseudo-header"
            elif name in pseudo:
                malformed = "duplicated pseudo-header"
            pseudo[name] = value
        else:
            if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                malformed = "connection-specific header"
            names.append(name)
        if value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE):
            malformed = "header value with surrounding whitespace"
        if never_indexed:
            if hidden is None:
                hidden = []
            hidden.append(name)
        values.append(value)
        append((name, value))
    if malformed:
        raise MalformedHeaders(malformed)
    if b"".join(names).translate(None, _NAME_CHARS) or b"" in names:
        raise MalformedHeaders("invalid character in a header name")
    if b"".join(values).translate(None, _VALUE_CHARS):
        raise MalformedHeaders("invalid character in a header value")
    return headers, pseudo, NO_NAMES if hidden is None else frozenset(hidden)
