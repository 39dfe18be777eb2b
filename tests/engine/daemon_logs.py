"""What the daemon wrote on stderr, as the engine's process tests check it: only our JSON."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Daemon


def json_log(d: Daemon) -> list[dict[str, Any]]:
    """Every stderr line of the daemon, parsed; fails naming the first line that is not
    one JSON object (a library's own line, or a peer's text that escaped)."""
    records = []
    for number, line in enumerate(d.log_lines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"stderr line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), f"stderr line {number} is not an object: {line!r}"
        records.append(record)
    return records


def access_log(d: Daemon) -> list[dict[str, Any]]:
    """The access-log records (one per call the daemon accepted), each with its
    `attributes` beside `body`, `trace_id`, ... (as `Daemon.records()` has them);
    every stderr line must still be JSON."""
    json_log(d)
    return d.access()
