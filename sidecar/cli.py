"""The `sidecar` command: thin wrappers that parse arguments and call into the package."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import grpc

from sidecar.config import Config
from sidecar.errors import ConfigError

DEFAULT_CONFIG = "/etc/sidecar/sidecar.yaml"
_config_option = click.option(
    "--config", "config_path", envvar="SIDECAR_CONFIG", default=DEFAULT_CONFIG,
    show_default=True, type=click.Path(dir_okay=False),
    help="Config file (SIDECAR_CONFIG is the fallback).",
)


@click.group()
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
    from sidecar.daemon import Daemon
    from sidecar.telemetry.logging import configure_logging

    configure_logging(config.log.level)
    sys.exit(Daemon(config, config_path).run())


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


def _channel(socket: str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix:{socket}")


def _fail_rpc(e: grpc.RpcError) -> None:
    click.echo(f"error: {e.code().name}: {e.details()}", err=True)
    sys.exit(1)


@main.command()
@click.option("--socket", "socket_path", required=True, help="A listener's socket path.")
@click.option("--service", default="", help='Target name; "" (default) is the daemon.')
@click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait.")
def health(socket_path: str, service: str, timeout: float) -> None:
    """gRPC health check over the socket: exit 0 only if SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(socket_path) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            _fail_rpc(e)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    click.echo(status)
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)


@main.command()
@click.option("--admin", "address", required=True, help="host:port or unix:/path")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(address: str, as_json: bool) -> None:
    """Listeners and targets of a running daemon, from its admin endpoint."""
    from sidecar.telemetry.status_table import fetch_status, render

    try:
        data = asyncio.run(fetch_status(address))
    except OSError as e:
        click.echo(f"error: cannot reach admin endpoint {address}: {e}", err=True)
        sys.exit(1)
    click.echo(render(data, as_json))


def _headers(values: tuple[str, ...]) -> list[Any]:
    from sidecar._generated import sidecar_pb2

    out = []
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not 'Name: value'", param_hint="-H")
        out.append(sidecar_pb2.Header(name=name.strip(), value=text.strip()))
    return out


@main.command()
@click.option("--socket", "socket_path", required=True)
@click.argument("target")
@click.argument("method")
@click.argument("path")
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value', repeatable.")
@click.option("--data", default="", help="Request body.")
@click.option("--timeout", default=10.0, show_default=True)
def http(socket_path: str, target: str, method: str, path: str, headers: tuple[str, ...],
         data: str, timeout: float) -> None:
    """One HTTP call through the daemon; prints status, headers, body."""
    from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc

    request = sidecar_pb2.HttpRequest(target=target, method=method.upper(), path=path,
                                      headers=_headers(headers), body=data.encode())
    with _channel(socket_path) as channel:
        try:
            reply = sidecar_pb2_grpc.HttpProxyStub(channel).Call(request, timeout=timeout)
        except grpc.RpcError as e:
            _fail_rpc(e)
    click.echo(f"HTTP {reply.status}")
    for h in reply.headers:
        click.echo(f"{h.name}: {h.value}")
    click.echo()
    sys.stdout.buffer.write(reply.body)


@main.command()
@click.option("--socket", "socket_path", required=True)
@click.argument("target")
@click.argument("topic")
@click.option("--key", default=None)
@click.option("--value", required=True)
@click.option("-H", "--header", "headers", multiple=True, help="'name: value', repeatable.")
@click.option("--timeout", default=10.0, show_default=True)
def publish(socket_path: str, target: str, topic: str, key: str | None, value: str,
            headers: tuple[str, ...], timeout: float) -> None:
    """One Kafka publish through the daemon; prints partition and offset."""
    from sidecar._generated import sidecar_pb2, sidecar_pb2_grpc

    request = sidecar_pb2.PublishRequest(
        target=target, topic=topic, key=(key or "").encode(), value=value.encode(),
        headers=_headers(headers),
    )
    with _channel(socket_path) as channel:
        try:
            reply = sidecar_pb2_grpc.PublisherStub(channel).Publish(request, timeout=timeout)
        except grpc.RpcError as e:
            _fail_rpc(e)
    click.echo(f"topic={reply.topic} partition={reply.partition} offset={reply.offset}")


@main.command()
@click.option("--socket-dir", default=None, type=click.Path(file_okay=False),
              help="Where the demo's temporary folder (sockets, config, logs) goes [/tmp].")
@click.option("--no-kafka", is_flag=True, help="Skip the Kafka broker and target.")
def demo(socket_dir: str | None, no_kafka: bool) -> None:
    """Run the daemon with local demo upstreams (HTTP, gRPC, Kafka) and print commands to try."""
    from sidecar.demo import run_demo

    sys.exit(run_demo(click.echo, socket_dir=socket_dir, kafka=not no_kafka))
