"""Reads raw YAML values into typed ones, collecting every problem with its key path.

The model in `config.py` asks a `Section` for each key; a wrong value is
recorded (`targets.billing.pool.max_connections: must be >= 1`) and a default
stands in, so one pass reports all problems at once. Values that came from
`${VAR}` are never echoed in a message: they may be secrets (a message names the
variable instead). Such a value is text; a number, boolean, duration or size key
parses it as its own type, and a value used that way is not counted as a secret.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s|m|h)$")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# As the YAML 1.2 loader reads an unquoted boolean (config_loader._Yaml12Loader).
_BOOLEANS = {"true": True, "True": True, "TRUE": True,
             "false": False, "False": False, "FALSE": False}
_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Problems:
    """Every problem found in one config, which key paths hold secrets, and their values
    (for redacting library text that quotes them)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.secret_paths: set[str] = set()
        self.env_names: dict[str, list[str]] = {}  # key path -> the variables it holds
        self.env_values: dict[str, set[str]] = {}  # key path -> the values they gave
        self.typed_paths: set[str] = set()  # read as a number, boolean, duration or size

    @property
    def secret_values(self) -> set[str]:
        """Every substituted value, except those a typed key read (a number is no secret,
        and blanking `7` from every library line would garble them)."""
        return {value for path, values in self.env_values.items()
                if path not in self.typed_paths for value in values}

    def add(self, path: str, reason: str) -> None:
        self.lines.append(f"{path}: {reason}" if path else reason)

    def show(self, path: str, value: Any) -> str:
        """A value as it may appear in a message: never one from the environment."""
        if path in self.secret_paths:
            names = ", ".join(f"${{{n}}}" for n in self.env_names.get(path, ()))
            return f"(value of {names} from the environment)" if names \
                else "(value from the environment)"
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."


def substitute_env(raw: Any, path: str, problems: Problems, env: Mapping[str, str]) -> Any:
    """Replace `${VAR}` (and `${VAR:-default}`) in every string; `$${` is a literal `${`."""
    if isinstance(raw, dict):
        return {k: substitute_env(v, _join(path, str(k)), problems, env) for k, v in raw.items()}
    if isinstance(raw, list):
        return [substitute_env(v, f"{path}[{i}]", problems, env) for i, v in enumerate(raw)]
    if not isinstance(raw, str) or "$" not in raw:
        return raw

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        problems.secret_paths.add(path)
        problems.env_names.setdefault(path, []).append(name)
        value = env.get(name, default)
        if value is not None:
            problems.env_values.setdefault(path, set()).add(value)
            return value
        problems.add(path, f"environment variable {name} is not set")
        return ""

    return _ENV.sub(replace, raw)


def glob_pattern(glob: str) -> re.Pattern[str]:
    """A compiled, case-sensitive, whole-string pattern for a shell-style glob."""
    return re.compile(fnmatch.translate(glob))


def _integer(text: str) -> int | None:
    return int(text) if _INTEGER.fullmatch(text) else None


def _number(text: str) -> float | None:
    return float(text) if _NUMBER.fullmatch(text) else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Section:
    """One mapping of the config at `path`; getters validate and default each key."""

    def __init__(
        self, problems: Problems, raw: Any, path: str, allowed: Iterable[str]
    ) -> None:
        self.problems = problems
        self.path = path
        self.raw: dict[str, Any] = {}
        if raw is None:
            return
        if not isinstance(raw, dict):
            problems.add(path, "must be a mapping")
            return
        allowed = set(allowed)
        for key, value in raw.items():
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                problems.add(_join(path, str(key)), f"unknown key (known: {known})")
            else:
                self.raw[key] = value

    def key_path(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def fail(self, key: str, reason: str) -> None:
        self.problems.add(self.key_path(key), reason)

    def _typed(self, key: str, parse: Callable[[str], Any]) -> Any:
        """The value of `key`; when `${VAR}` gave it, as `parse` reads that text (None:
        not of the type), so a typed key takes a variable as YAML would the literal."""
        value = self.raw.get(key)
        path = self.key_path(key)
        if not isinstance(value, str) or path not in self.problems.env_names:
            return value
        parsed = parse(value.strip())
        if parsed is None:
            return value
        self.problems.typed_paths.add(path)
        return parsed

    def _wrong(self, key: str, expected: str) -> None:
        shown = self.problems.show(self.key_path(key), self.raw[key])
        self.fail(key, f"must be {expected}, got {shown}")

    def section(self, key: str, allowed: Iterable[str]) -> Section:
        return Section(self.problems, self.raw.get(key), self.key_path(key), allowed)

    def string(self, key: str, default: str, *, choices: Iterable[str] = ()) -> str:
        value = self.optional_string(key)
        if value is None:
            return default
        options = tuple(choices)
        if options and value not in options:
            shown = self.problems.show(self.key_path(key), value)
            self.fail(key, f"must be one of {', '.join(options)}, got {shown}")
            return default
        return value

    def optional_string(self, key: str) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self._wrong(key, "a string")
            return None
        return str(value)

    def required_string(self, key: str) -> str:
        value = self.optional_string(key)
        if not value:
            if key not in self.raw or self.raw[key] in (None, ""):
                self.fail(key, "is required")
            return ""
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, _BOOLEANS.get)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._wrong(key, "true or false")
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self._typed(key, _integer)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(key, "a whole number")
            return default
        if minimum is not None and value < minimum:
            self.fail(key, f"must be >= {minimum}" if minimum else "must be >= 0")
            return default
        return value

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        value = self._typed(key, _number)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._wrong(key, "a number")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(key, f"must be {bound}")
            return default
        return float(value)

    def duration(self, key: str, default: float, *, allow_zero: bool = False) -> float:
        value = self.optional_duration(key, allow_zero=allow_zero)
        return default if value is None else value

    def optional_duration(self, key: str, *, allow_zero: bool = False) -> float | None:
        value = self._typed(key, lambda text: text if _DURATION.match(text) else None)
        if value is None:
            return None
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            self._wrong(key, "a duration with a unit (250ms, 5s, 2m)")
            return None
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds <= 0 and not allow_zero:
            self.fail(key, "must be > 0")
            return None
        return seconds

    def size(self, key: str, default: int) -> int:
        value = self._typed(key, lambda text: text if _SIZE.match(text) else None)
        if value is None:
            return default
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        match = _SIZE.match(text) if isinstance(text, str) else None
        if match is None:
            self._wrong(key, "a size (512KiB, 16MiB, or bytes)")
            return default
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
        if size <= 0:
            self.fail(key, "must be > 0")
            return default
        return size

    def items(self, key: str) -> list[tuple[str, Any]]:
        """A list's entries with their key paths (`routes[0]`)."""
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self._wrong(key, "a list")
            return []
        return [(f"{self.key_path(key)}[{i}]", item) for i, item in enumerate(value)]

    def string_list(self, key: str) -> tuple[str, ...]:
        out = []
        for path, item in self.items(key):
            if isinstance(item, str) and item:
                out.append(item)
            else:
                self.problems.add(path, "must be a non-empty string")
        return tuple(out)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._wrong(key, "a mapping of names to strings")
            return {}
        out = {}
        for name, item in value.items():
            path = _join(self.key_path(key), str(name))
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                self.problems.add(path, "must be a string")
            else:
                out[str(name)] = str(item)
        return out

    def existing_file(self, key: str) -> str | None:
        value = self.optional_string(key)
        if value is not None and not os.path.isfile(value):
            self.fail(key, f"file not found: {self.problems.show(self.key_path(key), value)}")
        return value
