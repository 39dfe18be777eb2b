"""Unix-socket listeners: socket files and modes, and the internal grpc.aio server that
answers the daemon's own services behind each engine listener (sidecar/engine/server.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc
from sidecar.config import Listener
from sidecar.errors import ListenerError
from sidecar.runtime import Runtime
from sidecar.services.health import HealthReporter
from sidecar.services.http_proxy import HttpProxyService
from sidecar.services.publisher import PublisherService
from sidecar.telemetry.hub import Telemetry

_SERVICE_NAMES = (
    sidecar_pb2.DESCRIPTOR.services_by_name["HttpProxy"].full_name,
    sidecar_pb2.DESCRIPTOR.services_by_name["Publisher"].full_name,
    "grpc.health.v1.Health",
    reflection.SERVICE_NAME,
)


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


class ListenerServer:
    """One grpc.aio server on one Unix socket: health, reflection and `sidecar.v1.*` (any
    other method is UNIMPLEMENTED; the engine listener proxies those itself)."""

    def __init__(
        self,
        listener: Listener,
        key: str,
        max_message: int,
        runtime: Callable[[], Runtime],
        health: HealthReporter,
        telemetry: Telemetry,
    ) -> None:
        self.listener = listener
        self.key = key  # its config key path, `listeners[0]`, for messages
        self._bound = False  # the socket file is ours to remove
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", max_message),
                ("grpc.max_receive_message_length", max_message),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.http = HttpProxyService(listener.name, runtime, telemetry)
        self.publisher = PublisherService(listener.name, runtime, telemetry)
        sidecar_pb2_grpc.add_HttpProxyServicer_to_server(self.http, self.server)
        sidecar_pb2_grpc.add_PublisherServicer_to_server(self.publisher, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(health.servicer, self.server)
        reflection.enable_server_reflection(_SERVICE_NAMES, self.server)

    async def start(self) -> None:
        path = self.listener.socket
        key = f"{self.key}.socket"
        prepare_socket_path(path, key)
        try:
            with _umask_for(self.listener.mode):
                self.server.add_insecure_port(f"unix:{path}")
            self._bound = True
            await self.server.start()
            os.chmod(path, self.listener.mode)
        except OSError as e:
            raise ListenerError(f"{key}: cannot listen on {path}: {e.strerror or e}") from e
        except RuntimeError as e:  # grpc's word for a port it could not bind
            raise ListenerError(f"{key}: cannot listen on {path}: {e}") from e

    def update(self, listener: Listener, key: str) -> None:
        """Take a reloaded listener on the same socket: new name or mode apply at once."""
        if listener.mode != self.listener.mode:
            os.chmod(listener.socket, listener.mode)
        self.listener = listener
        self.key = key
        for service in (self.http, self.publisher):
            service.listener = listener.name

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, let calls finish for `grace` seconds, remove the socket file."""
        await self.server.stop(grace)
        if self._bound:
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listener.socket)
