"""Microbenchmark: one unary gRPC exchange through a client and a server H2Connection in memory.

Client HEADERS + DATA (END_STREAM), server HEADERS + DATA + trailers, both sides acknowledging
the data they consumed; prints the median of several rounds in microseconds per exchange.
It times the sans-I/O engine alone (no sockets, no event loop): CPU time per exchange,
which is about what a proxied call costs the engine (a server engine on the caller's side,
a client engine on the upstream's).
"""

from __future__ import annotations

import argparse
import statistics
import time

from sidecar.engine.connection import H2Connection
from sidecar.engine.events import DataReceived

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/bench.Echo/Unary"),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.85.1 grpc-c/51.0.0 (linux; chttp2)"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]
MESSAGE = b"\x00" + (256).to_bytes(4, "big") + b"x" * 256


def handshake() -> tuple[H2Connection, H2Connection]:
    client, server = H2Connection(client=True), H2Connection(client=False)
    client.initiate()
    server.initiate()
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    server.receive(client.data_to_send())
    return client, server


def exchange(client: H2Connection, server: H2Connection, timeout: bytes) -> None:
    stream_id = client.next_stream_id()
    client.send_headers(stream_id, [*REQUEST, (b"grpc-timeout", timeout)])
    client.send_data(stream_id, MESSAGE, end_stream=True)
    for event in server.receive(client.data_to_send()):
        if isinstance(event, DataReceived):
            server.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
    server.send_headers(stream_id, RESPONSE)
    server.send_data(stream_id, MESSAGE)
    server.send_trailers(stream_id, TRAILERS)
    for event in client.receive(server.data_to_send()):
        if isinstance(event, DataReceived):
            client.acknowledge_received_data(event.stream_id, event.flow_controlled_length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20_000, help="exchanges per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    timeouts = [b"%dm" % (1000 + i % 977) for i in range(args.exchanges)]
    samples = []
    for _ in range(args.rounds):
        client, server = handshake()
        started = time.process_time()
        for timeout in timeouts:
            exchange(client, server, timeout)
        samples.append((time.process_time() - started) / args.exchanges * 1e6)
    print(
        f"unary exchange (client + server engine): median {statistics.median(samples):.1f} us "
        f"(min {min(samples):.1f}, rounds {', '.join(f'{s:.1f}' for s in samples)})"
    )


if __name__ == "__main__":
    main()
