"""The `sidecar` command: thin wrappers that parse arguments and call into the package.

Client commands (`health`, `status`, `http`, `publish`) find the daemon without
flags (`$SIDECAR_SOCKET`, `$SIDECAR_ADDRESS`, `$SIDECAR_ADMIN`, then the
packaged defaults) and report a user's mistake as one line naming what they
tried, never a traceback. They import grpc themselves: `run` and `check-config`
never load it (the daemon speaks gRPC on its own engine).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import click

from sidecar.config import Config
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    import grpc

DEFAULT_CONFIG = "/etc/sidecar/sidecar.yaml"
DEFAULT_SOCKET = "/run/sidecar/app.sock"
DEFAULT_ADMIN = "127.0.0.1:9901"

# `sidecar health` exits as grpc_health_probe does, so a probe written for one suits both.
HEALTH_BAD_ARGUMENTS = 1
HEALTH_UNREACHABLE = 2
HEALTH_RPC_FAILED = 3
HEALTH_NOT_SERVING = 4

_config_option = click.option(
    "--config", "config_path", envvar="SIDECAR_CONFIG", default=DEFAULT_CONFIG,
    show_default=True, type=click.Path(dir_okay=False),
    help="Config file (SIDECAR_CONFIG is the fallback).",
)


def _socket_file(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The file behind `--socket`: a path, `unix:PATH` or `unix:///ABSOLUTE/PATH`."""
    path = value
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path.startswith("/"):
            raise click.BadParameter(
                f"{value!r}: unix:// takes an absolute path, as in unix:///run/sidecar/app.sock")
    elif value.startswith("unix:"):
        path = value[len("unix:"):]
    if not path:
        raise click.BadParameter(f"{value!r} names no socket file")
    return path


_socket_option = click.option(
    "--socket", "socket_path", envvar=["SIDECAR_SOCKET", "SIDECAR_ADDRESS"],
    default=DEFAULT_SOCKET, show_default=True, show_envvar=True, callback=_socket_file,
    help="A listener's socket: a path or a unix: URI.",
)
_admin_option = click.option(
    "--admin", "address", envvar="SIDECAR_ADMIN", default=DEFAULT_ADMIN, show_default=True,
    show_envvar=True, help="The admin endpoint: host:port or unix:/path.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sidecar")
def main() -> None:
    """A local daemon that makes an application's outbound calls over one Unix socket."""


def _load(config_path: str) -> Config:
    from sidecar.config_loader import load_config

    try:
        return load_config(config_path)
    except ConfigError as e:
        for problem in e.problems:
            click.echo(problem, err=True)
        sys.exit(1)


@main.command()
@_config_option
def run(config_path: str) -> None:
    """Run the daemon in the foreground."""
    config = _load(config_path)
    import logging

    from sidecar.daemon import Daemon, describe
    from sidecar.telemetry.logging import configure_logging

    configure_logging(config.log.level)
    try:
        daemon = Daemon(config, config_path)
    except Exception as e:  # a library refusing what the config asks: one line, exit 1
        logging.getLogger("sidecar").error("startup failed: %s", describe(e))
        sys.exit(1)
    sys.exit(daemon.run())


@main.command("check-config")
@_config_option
def check_config(config_path: str) -> None:
    """Validate a config: exit 0 if valid, else 1 and one line per problem."""
    config = _load(config_path)
    from sidecar.config import KafkaTarget
    from sidecar.upstreams.kafka import producer_problems

    problems = [line for target in config.targets.values() if isinstance(target, KafkaTarget)
                for line in producer_problems(target)]
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{config_path}: ok ({len(config.listeners)} listeners, "
               f"{len(config.targets)} targets)")


@main.command("config-schema")
def config_schema() -> None:
    """Print the config's JSON Schema (draft 2020-12), for editors and CI."""
    import orjson

    from sidecar.config_schema import config_schema as build

    click.echo(orjson.dumps(build(), option=orjson.OPT_INDENT_2).decode())


# ---- reaching the daemon ---------------------------------------------------------


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _why(e: OSError, timeout: float, hints: dict[type[OSError], str]) -> str:
    """One clause for a failed connect: the system's reason and what to check."""
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout:g}s"
    reason = e.strerror or str(e) or type(e).__name__
    hint = next((text for kind, text in hints.items() if isinstance(e, kind)), "")
    return f"{reason[:1].lower()}{reason[1:]}{hint}"


_SOCKET_HINTS: dict[type[OSError], str] = {
    FileNotFoundError: " (is the daemon running? --socket or $SIDECAR_SOCKET picks another)",
    ConnectionRefusedError: " (no daemon listens on this socket file)",
    PermissionError: " (the listener's mode and group decide who may connect)",
}
_ADMIN_HINTS: dict[type[OSError], str] = {
    ConnectionRefusedError: " (is the daemon running with this admin.address? "
                            "--admin or $SIDECAR_ADMIN names another)",
    FileNotFoundError: " (is the daemon running with this admin.address?)",
}


def _reach_daemon(path: str, timeout: float, code: int = 1) -> None:
    """Exit with one line unless something accepts connections on the socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as e:
            why = _why(e, timeout, _SOCKET_HINTS)
            if isinstance(e, ConnectionRefusedError) and not _is_socket(path):
                why = "not a socket file"
            _fail(f"cannot reach the daemon at unix:{path}: {why}", code)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _channel(socket_path: str) -> grpc.Channel:
    import grpc

    return grpc.insecure_channel(f"unix:{socket_path}")


_QUIET_CODES = {  # what to say when the daemon sent a code without details
    "DEADLINE_EXCEEDED": "no answer within the timeout",
    "UNIMPLEMENTED": "the server on this socket does not serve this method",
    "UNAVAILABLE": "the daemon closed the connection",
}


def _fail_rpc(e: grpc.RpcError, socket_path: str, code: int = 1,
              message: str | None = None) -> NoReturn:
    status = e.code()
    text = message or e.details() or _QUIET_CODES.get(status.name, "no details")
    _fail(f"{status.name}: {text} (daemon at unix:{socket_path})", code)


def _unary(socket_path: str, timeout: float, stub: str, method: str, request: Any) -> Any:
    """One sidecar.v1 call to the daemon (`stub` names the generated stub class), or
    exit with one line saying why it could not be made or what the daemon answered."""
    import grpc

    from sidecar.v1 import sidecar_pb2_grpc

    _reach_daemon(socket_path, timeout)
    with _channel(socket_path) as channel:
        call = getattr(getattr(sidecar_pb2_grpc, stub)(channel), method)
        try:
            return call(request, timeout=timeout)
        except grpc.RpcError as e:
            _fail_rpc(e, socket_path)


# ---- client commands -------------------------------------------------------------


class _ProbeUsageError(click.UsageError):
    exit_code = HEALTH_BAD_ARGUMENTS


class _ProbeCommand(click.Command):
    """Invalid arguments exit 1, as grpc_health_probe's do (click's usual 2 means unreachable)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _ProbeUsageError(e.format_message(), e.ctx) from None


@main.command(cls=_ProbeCommand)
@_socket_option
@click.option("--service", default="", help='Target name; "" (default) is the daemon.')
@click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait.")
def health(socket_path: str, service: str, timeout: float) -> None:
    """gRPC health check over the socket: exit 0 only if SERVING.

    Exit codes as grpc_health_probe's: 1 invalid arguments, 2 cannot connect,
    3 the health call failed (an unknown --service, a timeout), 4 not serving.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    _reach_daemon(socket_path, timeout, HEALTH_UNREACHABLE)
    with _channel(socket_path) as channel:
        ready = grpc.channel_ready_future(channel)
        try:
            ready.result(timeout=max(0.0, deadline - time.monotonic()))
        except grpc.FutureTimeoutError:
            ready.cancel()
            _fail(f"cannot reach the daemon at unix:{socket_path}: no gRPC connection within "
                  f"{timeout:g}s (is it a sidecar listener?)", HEALTH_UNREACHABLE)
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service),
                               timeout=max(0.0, deadline - time.monotonic()))
        except grpc.RpcError as e:
            unknown = None
            if e.code() == grpc.StatusCode.NOT_FOUND:
                unknown = (f"unknown service {service!r}; \"\" is the daemon, a target's name "
                           "checks that target")
            _fail_rpc(e, socket_path, HEALTH_RPC_FAILED, unknown)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    click.echo(status)
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING
             else HEALTH_NOT_SERVING)


def _admin_endpoint(address: str) -> tuple[int, Any]:
    """(socket family, connect address) for `host:port` or `unix:/path`; exits if neither."""
    if address.startswith("unix:"):
        if address[len("unix:"):]:
            return socket.AF_UNIX, address[len("unix:"):]
    else:
        host, _, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return socket.AF_UNSPEC, (host, int(port))
    _fail(f"cannot reach admin endpoint at {address}: not host:port or unix:/path")


def _reach_admin(address: str, timeout: float) -> None:
    family, where = _admin_endpoint(address)
    try:
        if family == socket.AF_UNIX:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(where)
        else:
            socket.create_connection(where, timeout).close()
    except OSError as e:
        _fail(f"cannot reach admin endpoint at {address}: {_why(e, timeout, _ADMIN_HINTS)}")


@main.command()
@_admin_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(address: str, as_json: bool) -> None:
    """Listeners and targets of a running daemon, from its admin endpoint."""
    from sidecar.telemetry.status_table import fetch_status, render

    _reach_admin(address, timeout=5.0)
    try:
        text = render(asyncio.run(fetch_status(address)), as_json)
    except OSError as e:
        answer = getattr(e.__cause__, "status", None)  # an HTTP error status, if it got one
        why = f"HTTP {answer} (is it another service?)" if isinstance(answer, int) else str(e)
        _fail(f"cannot read /status from admin endpoint at {address}: {why}")
    except (ValueError, KeyError, TypeError):  # not JSON, or not a sidecar's /status
        _fail(f"admin endpoint at {address} answered /status with something that is not "
              "a sidecar's status (is it another service?)")
    click.echo(text)


def _headers(values: tuple[str, ...]) -> list[Any]:
    from sidecar.v1 import sidecar_pb2

    out = []
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not 'Name: value'", param_hint="-H")
        out.append(sidecar_pb2.Header(name=name.strip(), value=text.strip()))
    return out


@main.command()
@_socket_option
@click.argument("target")
@click.argument("method")
@click.argument("path")
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value', repeatable.")
@click.option("--data", default="", help="Request body.")
@click.option("--timeout", default=10.0, show_default=True)
def http(socket_path: str, target: str, method: str, path: str, headers: tuple[str, ...],
         data: str, timeout: float) -> None:
    """One HTTP call through the daemon; prints status, headers, body."""

    from sidecar.v1 import sidecar_pb2

    request = sidecar_pb2.HttpRequest(target=target, method=method.upper(), path=path,
                                      headers=_headers(headers), body=data.encode())
    reply = _unary(socket_path, timeout, "HttpProxyStub", "Call", request)
    click.echo(f"HTTP {reply.status}")
    for h in reply.headers:
        click.echo(f"{h.name}: {h.value}")
    click.echo()
    sys.stdout.buffer.write(reply.body)


@main.command()
@_socket_option
@click.argument("target")
@click.argument("topic")
@click.option("--key", default=None)
@click.option("--value", required=True)
@click.option("-H", "--header", "headers", multiple=True, help="'name: value', repeatable.")
@click.option("--timeout", default=10.0, show_default=True)
def publish(socket_path: str, target: str, topic: str, key: str | None, value: str,
            headers: tuple[str, ...], timeout: float) -> None:
    """One Kafka publish through the daemon; prints partition, offset, request id and
    whether it was spooled (then partition and offset are -1: ask publish-status)."""

    from sidecar.v1 import sidecar_pb2

    request = sidecar_pb2.PublishRequest(
        target=target, topic=topic, key=(key or "").encode(), value=value.encode(),
        headers=_headers(headers),
    )
    reply = _unary(socket_path, timeout, "PublisherStub", "Publish", request)
    click.echo(f"topic={reply.topic} partition={reply.partition} offset={reply.offset} "
               f"request_id={reply.request_id} spooled={'true' if reply.spooled else 'false'}")


@main.command("publish-status")
@_socket_option
@click.argument("target")
@click.argument("request_id")
@click.option("--timeout", default=10.0, show_default=True)
def publish_status(socket_path: str, target: str, request_id: str, timeout: float) -> None:
    """What became of a published message, by its request id (kept for spooled ones)."""

    from sidecar.v1 import sidecar_pb2

    request = sidecar_pb2.PublishStatusRequest(target=target, request_id=request_id)
    reply = _unary(socket_path, timeout, "PublisherStub", "Status", request)
    state = sidecar_pb2.PublishStatusResponse.State.Name(reply.state)
    if reply.state == sidecar_pb2.PublishStatusResponse.DELIVERED:
        click.echo(f"state={state} topic={reply.topic} partition={reply.partition} "
                   f"offset={reply.offset}")
    elif reply.state == sidecar_pb2.PublishStatusResponse.FAILED:
        click.echo(f"state={state} topic={reply.topic} error={reply.error}")
    else:
        click.echo(f"state={state}")


@main.command()
@click.option("--socket-dir", default=None, type=click.Path(file_okay=False),
              help="Where the demo's temporary folder (sockets, config, logs) goes "
                   "[$TMPDIR or /tmp].")
@click.option("--no-kafka", is_flag=True, help="Skip the Kafka broker and target.")
def demo(socket_dir: str | None, no_kafka: bool) -> None:
    """Run the daemon with local demo upstreams (HTTP, gRPC, Kafka) and print commands to try."""
    from sidecar.demo import run_demo

    sys.exit(run_demo(click.echo, socket_dir=socket_dir, kafka=not no_kafka))
