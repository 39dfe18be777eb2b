"""sd_notify: READY/RELOADING/STOPPING and watchdog pings, when run under systemd."""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """Sends state lines to $NOTIFY_SOCKET; does nothing when it is unset."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET")
        self._address = None if not path else ("\0" + path[1:] if path.startswith("@") else path)
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watched = usec is not None and usec.isdigit() and (pid is None or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if watched and usec else None

    def notify(self, state: str) -> None:
        if self._address is None:
            return
        # systemd gone or its socket unwritable: there is nobody to tell.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, \
                contextlib.suppress(OSError):
            sock.sendto(state.encode(), self._address)

    def ready(self) -> None:
        self.notify("READY=1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
