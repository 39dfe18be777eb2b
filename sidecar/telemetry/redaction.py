"""Blanks `${VAR}` values out of text a library wrote, before it is logged or shown.

A value from the environment may be a secret (a password in a broker URL, a host
name that is not public). Libraries such as librdkafka put configured values in
their own log lines and error strings; every such text passes through a
`Redactor` at the point it enters the daemon's logging. Besides each whole
value, its parts of four characters or more (a host, a port, a user, a
password: the value split at `:/@,;=&?#` and white space) are blanked too, as
libraries quote them apart (`Connect to ipv4#10.0.0.7:9092`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_MIN_PART = 4  # shorter parts are too common to blank (`1`, `all`) and too short to matter
_SEPARATORS = re.compile(r"[\s:/@,;=&?#]+")
# Parts that are an address's form, not its content: blanking them would hide nothing.
_FORM = frozenset({"http", "https", "unix", "unix-abstract", "ipv4", "ipv6", "localhost"})


class Redactor:
    """Replaces every secret value, and every part of one, with `***`."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        pieces: set[str] = set()
        for secret in secrets:
            if secret:
                pieces.add(secret)
                pieces.update(p for p in _SEPARATORS.split(secret)
                              if len(p) >= _MIN_PART and p.lower() not in _FORM)
        # Longest first, so a whole value is blanked before any of its parts.
        ordered = sorted(pieces, key=lambda p: (-len(p), p))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)


NO_SECRETS = Redactor()
