"""Watches the config file with inotify on the event loop: no thread, no polling.

A change is any event in the folder that holds the file (editors write a
temporary file and rename it; a Kubernetes ConfigMap mount swaps its `..data`
symlink) or in the folder its symlinks resolve to. After `debounce` seconds of
quiet the file is read, and `changed()` is called only when its bytes differ
from the last ones seen, so a touch or an unrelated file never reloads.

Why not a library: `watchfiles` runs a Rust thread and polls its channel;
inotify read from the loop costs nothing while nothing changes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import logging
import os
from collections.abc import Callable

log = logging.getLogger("sidecar")

_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# modify, attrib, close_write, moved_from, moved_to, create, delete, delete_self, move_self
_MASK = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800


class ConfigWatcher:
    """Calls `changed()` once the file at `path` settles with new content."""

    def __init__(self, path: str, debounce: float, changed: Callable[[], None]) -> None:
        self._path = os.path.abspath(path)
        self._debounce = debounce
        self._changed = changed
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._digest = _digest(self._path)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> bool:
        """Begin watching; False (with a warning logged) where inotify is not available."""
        try:
            self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                     use_errno=True)
            fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError) as e:
            log.warning("config watching unavailable: %s", e)
            return False
        if fd < 0:
            log.warning("config watching unavailable: %s", os.strerror(ctypes.get_errno()))
            return False
        self._fd = fd
        self._add_watches()
        asyncio.get_running_loop().add_reader(fd, self._readable)
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _add_watches(self) -> None:
        """Watch the file's folder and the folders its symlinks lead to (again after each
        change: a ConfigMap swap replaces the folder the link points into)."""
        assert self._libc is not None
        folders = {os.path.dirname(self._path), os.path.dirname(os.path.realpath(self._path))}
        for folder in folders:
            self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _MASK)

    def _readable(self) -> None:
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._debounce, self._settled)

    def _settled(self) -> None:
        self._timer = None
        self._add_watches()
        digest = _digest(self._path)
        if digest is None or digest == self._digest:
            return  # gone for a moment (mid-swap) or unchanged: nothing to reload
        self._digest = digest
        self._changed()


def _digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).digest()
    except OSError:
        return None
