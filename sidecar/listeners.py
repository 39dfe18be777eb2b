"""Unix-socket listeners' socket files and modes (the listeners are sidecar/engine/server.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator

from sidecar.errors import ListenerError


def prepare_socket_path(path: str, key: str) -> None:
    """Create the parent folder; replace a stale socket file; refuse a live one.

    Every refusal names the config key (`listeners[0].socket`) and what to change.
    """
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ListenerError(f"{key}: cannot create folder {folder}: {e.strerror}; "
                            f"{_permission_hint(folder)}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ListenerError(f"{key}: cannot create {path}: folder {folder} is not writable "
                            f"by this user; {_permission_hint(folder)}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"{key}: {path} exists and is not a socket; not replacing it "
                            "(remove it or choose another path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: nobody is listening
        return
    except PermissionError as e:
        raise ListenerError(f"{key}: cannot check whether {path} is in use: {e.strerror}; "
                            f"{_permission_hint(folder)}") from e
    finally:
        probe.close()
    raise ListenerError(f"{key}: {path} is in use by a running process (another sidecar?); "
                        "stop it or choose another path")


def _permission_hint(folder: str) -> str:
    return (f"run the daemon as a user that may write to {folder} (under systemd, "
            "RuntimeDirectory=sidecar makes /run/sidecar) or set it to a path under a folder "
            "this user owns")


@contextlib.contextmanager
def _umask_for(mode: int) -> Iterator[None]:
    """Create files with at most `mode`: a socket must never exist wider than configured."""
    previous = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(previous)
