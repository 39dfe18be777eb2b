"""Blanks `${VAR}` values out of text a library wrote, before it is logged or shown.

A value from the environment may be a secret (a password in a broker URL, a host
name that is not public). Libraries such as librdkafka put configured values in
their own log lines and error strings; every such text passes through a
`Redactor` at the point it enters the daemon's logging. Besides each whole
value, its parts of four characters or more (a host, a port, a user, a
password: the value split at `:/@,;=&?#` and white space) are blanked too, as
libraries quote them apart (`Connect to ipv4#10.0.0.7:9092`).

`redacted_config` is the running config as the admin endpoint's `/config` shows
it: every text holding such a value, every value of a header or producer
setting whose name is secret-like, and a URL's password become `<redacted>`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.config import Config

MASK = "***"
_MIN_PART = 4  # shorter parts are too common to blank (`1`, `all`) and too short to matter
_SEPARATORS = re.compile(r"[\s:/@,;=&?#]+")
REDACTED = "<redacted>"
# Names of headers and producer settings whose values are credentials (`sasl.*` whole).
_SECRET_NAME = re.compile(
    r"authorization|password|passwd|secret|token|key|sasl|credential|cookie|pem", re.I)
_URL_PASSWORD = re.compile(r"(://[^/@\s:]*:)[^/@\s]*@")
_NAMED_PAIRS = frozenset({"headers", "config"})  # tuples of (name, value) in the model
_HIDDEN = frozenset({"secrets", "pattern", "topic_patterns", "reserved"})  # derived, or secret
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


def redacted_config(config: Config) -> dict[str, Any]:
    """The config as JSON-ready values, with no secret left in it."""
    redact = Redactor(config.secrets)
    out = _value(config, redact)
    assert isinstance(out, dict)
    return out


def _value(value: Any, redact: Redactor) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        kind = getattr(type(value), "kind", None)
        if isinstance(kind, str):
            out["kind"] = kind
        for f in dataclasses.fields(value):
            if f.name in _HIDDEN:
                continue
            item = getattr(value, f.name)
            if f.name in _NAMED_PAIRS and isinstance(item, tuple):
                out[f.name] = {name: _named(name, text, redact) for name, text in item}
            elif f.name == "mode" and isinstance(item, int):
                out[f.name] = f"{item:04o}"
            else:
                out[f.name] = _value(item, redact)
        return out
    if isinstance(value, Mapping):
        return {str(k): _value(v, redact) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset):
        return [_value(v, redact) for v in value]
    if isinstance(value, str):
        return _text(value, redact)
    return value


def _named(name: str, text: str, redact: Redactor) -> str:
    return REDACTED if _SECRET_NAME.search(name) else _text(text, redact)


def _text(text: str, redact: Redactor) -> str:
    if redact(text) != text:
        return REDACTED
    return _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
