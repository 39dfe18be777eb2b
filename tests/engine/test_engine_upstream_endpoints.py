"""The frames pool over several real endpoints (grpcio servers on 127.0.0.1, .2 and .3,
handed to the pool by its resolver seam): streams spread by in-flight load, a failing
endpoint ejected, the name resolved again after its TTL, and the system resolver."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from sidecar.engine.client import UpstreamConnection
from sidecar.engine.endpoints import EndpointPolicy
from sidecar.engine.events import Headers
from sidecar.engine.pool import PoolOptions, UpstreamPool
from sidecar.errors import UpstreamUnavailableError
from tests.conftest import free_port
from tests.waiting import eventually_async


class Server:
    """A grpcio server on one loopback address: Unary echoes, Hold waits for `release`."""

    def __init__(self, host: str) -> None:
        self.port = free_port()
        self.address = f"{host}:{self.port}"
        self.calls = 0
        self.release = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            return request

        def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls += 1
            self.release.wait(10)
            return request

        handler = grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Hold": grpc.unary_unary_rpc_method_handler(hold)})
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(self.address)
        self.server.start()

    def stop(self) -> None:
        self.release.set()
        self.server.stop(0).wait()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started = [Server(f"127.0.0.{i}") for i in (1, 2, 3)]
    yield started
    for server in started:
        server.stop()


class Call:
    """One unary call on a pool connection: the handler of its upstream stream."""

    def __init__(self, pool: UpstreamPool, conn: UpstreamConnection, method: str) -> None:
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        headers: Headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
            (b":authority", pool.authority), (b"te", b"trailers"),
            (b"content-type", b"application/grpc")]
        self.conn = conn
        sid = conn.open(self, headers, False)
        conn.send_data(sid, b"\x00\x00\x00\x00\x02hi", True)

    def up_response(self, headers: Headers, end_stream: bool) -> None:
        if end_stream:
            self.up_trailers(headers)

    def up_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        pass

    def up_trailers(self, headers: Headers) -> None:
        self.done.set_result(dict(headers).get(b"grpc-status", b"?").decode())

    def up_reset(self, code: int) -> None:
        self.done.set_result(f"reset {code}")

    def up_lost(self, reason: str) -> None:
        self.done.set_result(f"lost: {reason}")


async def call(pool: UpstreamPool, method: str = "/test.Echo/Unary") -> Call:
    conn = pool.ready() or await pool.connection(5.0)
    return Call(pool, conn, method)


def resolver(answers: list[list[str]]):  # type: ignore[no-untyped-def]
    """A resolver seam answering each lookup with the next list (the last one repeats)."""
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers[min(len(asked), len(answers)) - 1]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def endpoints(pool: UpstreamPool) -> dict[str, dict[str, object]]:
    return {e["address"]: e for e in pool.stats()["endpoints"]}


async def test_streams_spread_over_every_resolved_endpoint_by_in_flight_load(
    servers: list[Server],
) -> None:
    resolve = resolver([[s.address for s in servers]])
    pool = UpstreamPool("up", "dns:///backends:50051", resolve=resolve, rand=random.Random(8))
    try:
        held = [await call(pool, "/test.Echo/Hold") for _ in range(30)]
        loads = [int(e["streams"]) for e in endpoints(pool).values()]  # type: ignore[call-overload]
        assert len(loads) == 3 and min(loads) >= 1 and sum(loads) == 30
        assert max(loads) - min(loads) <= 4, loads
        for server in servers:
            server.release.set()
        assert {await c.done for c in held} == {"0"}
        assert [s.calls for s in servers] == loads
        assert resolve.asked == [("backends", 50051)]  # type: ignore[attr-defined]
    finally:
        await pool.close()


async def test_an_ipv4_list_is_fixed_endpoints_never_resolved(servers: list[Server]) -> None:
    """gRPC's `ipv4:a:port,b:port` form: each is an endpoint, the resolver never asked."""
    resolve = resolver([[]])
    address = "ipv4:" + ",".join(s.address for s in servers)
    pool = UpstreamPool("up", address, resolve=resolve, rand=random.Random(8))
    try:
        held = [await call(pool, "/test.Echo/Hold") for _ in range(30)]
        assert sorted(endpoints(pool)) == sorted(s.address for s in servers)
        loads = [int(e["streams"]) for e in endpoints(pool).values()]  # type: ignore[call-overload]
        assert min(loads) >= 1 and sum(loads) == 30
        for server in servers:
            server.release.set()
        assert {await c.done for c in held} == {"0"}
        assert resolve.asked == []  # type: ignore[attr-defined]
    finally:
        await pool.close()


async def test_an_endpoint_failing_its_connects_is_ejected_and_skipped(
    servers: list[Server],
) -> None:
    dead = f"127.0.0.2:{free_port()}"
    now = [0.0]
    policy = EndpointPolicy(reconnect_base=0.01, reconnect_max=0.02, eject_after=1,
                            ejection=30.0)
    pool = UpstreamPool("up", "dns:///backends:1", resolve=resolver([[servers[0].address, dead]]),
                        options=PoolOptions(policy=policy), clock=lambda: now[0],
                        rand=random.Random(9))
    try:
        refused = 0
        for _ in range(20):
            try:
                assert await (await call(pool)).done == "0"
            except UpstreamUnavailableError as e:
                assert str(e) == "target 'up' unreachable: connection refused"
                refused += 1
            now[0] += 1.0  # past any backoff, well within the ejection
        assert refused == 1
        assert servers[0].calls == 19
        state = endpoints(pool)[dead]
        assert (state["state"], state["consecutive_failures"]) == ("ejected", 1)
        assert pool.healthy()  # one endpoint still connects
    finally:
        await pool.close()


async def test_without_ejection_a_failing_endpoint_is_tried_again_after_its_backoff(
    servers: list[Server],
) -> None:
    dead = f"127.0.0.2:{free_port()}"
    now = [0.0]
    policy = EndpointPolicy(reconnect_base=0.01, reconnect_max=0.02, eject_after=0)
    pool = UpstreamPool("up", "dns:///backends:1", resolve=resolver([[servers[0].address, dead]]),
                        options=PoolOptions(policy=policy), clock=lambda: now[0],
                        rand=random.Random(9))
    try:
        refused = 0
        for _ in range(20):
            try:
                await (await call(pool)).done
            except UpstreamUnavailableError:
                refused += 1
            now[0] += 1.0
        assert refused > 1
        assert endpoints(pool)[dead]["state"] == "failing"
    finally:
        await pool.close()


async def test_the_name_is_resolved_again_after_its_dns_ttl(servers: list[Server]) -> None:
    first, second = servers[0], servers[1]
    now = [0.0]
    resolve = resolver([[first.address], [second.address]])
    pool = UpstreamPool("up", "dns:///backends:1", resolve=resolve,
                        options=PoolOptions(dns_ttl=60.0), clock=lambda: now[0])
    try:
        assert await (await call(pool)).done == "0"
        now[0] = 59.0
        assert await (await call(pool)).done == "0"
        assert len(resolve.asked) == 1  # type: ignore[attr-defined]
        now[0] = 61.0
        assert await (await call(pool)).done == "0"  # on the old endpoint, while resolving

        async def moved() -> None:
            assert list(endpoints(pool)) == [second.address]

        await eventually_async(moved)
        assert await (await call(pool)).done == "0"
        assert (first.calls, second.calls) == (3, 1)
    finally:
        await pool.close()


async def test_a_name_that_does_not_resolve_fails_the_call_and_the_health() -> None:
    async def nothing(host: str, port: int) -> list[str]:
        raise OSError("no such name")

    pool = UpstreamPool("up", "dns:///nowhere:1", resolve=nothing)
    try:
        with pytest.raises(UpstreamUnavailableError) as err:
            await pool.connection(1.0)
        assert str(err.value) == "target 'up' unreachable: connection failed"
        assert not pool.healthy()
    finally:
        await pool.close()


async def test_the_system_resolver_reaches_a_dns_address(servers: list[Server]) -> None:
    pool = UpstreamPool("up", f"dns:///localhost:{servers[0].port}")
    try:
        assert await (await call(pool)).done == "0"
        assert list(endpoints(pool)) == [servers[0].address]
    finally:
        await pool.close()
