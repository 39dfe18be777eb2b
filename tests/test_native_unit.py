"""NativeUnary without sockets: a fake caller connection records what the daemon answers."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from sidecar._generated import sidecar_pb2
from sidecar.services import native
from sidecar.services.native import Method, NativeContext, NativeUnary


class FakeCaller:
    """What NativeUnary asks of a CallerConnection, recorded."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sent: list[tuple[str, Any]] = []
        self.acknowledged = 0
        self.finished = False
        self.peer = None  # SO_PEERCRED of the connection: none here

    def acknowledge(self, stream_id: int, length: int) -> None:
        self.acknowledged += length

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False,
                     unique: Any = ()) -> None:
        self.sent.append(("headers", [*headers, *unique]))  # as the wire has them

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        self.sent.append(("data", bytes(data)))

    def send_trailers(self, stream_id: int, headers: Any) -> None:
        self.sent.append(("trailers", dict(headers)))

    def finish(self, stream_id: int, request_open: bool) -> None:
        self.finished = True


def framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


REQUEST = framed(sidecar_pb2.HttpRequest(target="web", method="GET", path="/").SerializeToString())
HEADERS = [(b":method", b"POST"), (b":path", b"/sidecar.v1.HttpProxy/Call"),
           (b"grpc-timeout", b"100m"), (b"x-user-id", b"alice"), (b"blob-bin", b"AAE")]


async def test_a_handler_past_the_callers_deadline_is_answered_for_naming_the_target() -> None:
    async def never(request: Any, context: NativeContext) -> Any:
        await asyncio.sleep(30)

    caller = FakeCaller()
    call = NativeUnary(caller, 1, HEADERS, False, "/sidecar.v1.HttpProxy/Call",
                       Method(sidecar_pb2.HttpRequest.FromString, never), 1024)
    call.caller_data(REQUEST, len(REQUEST), True)
    await asyncio.sleep(0.4)
    [(kind, trailers)] = caller.sent
    assert kind == "trailers" and trailers[b"grpc-status"] == b"4"
    assert trailers[b"grpc-message"] == b"target 'web': deadline exceeded"
    assert caller.finished and caller.acknowledged == len(REQUEST)


async def test_the_handler_sees_metadata_as_grpc_aio_gives_it_and_its_answer_is_framed() -> None:
    seen: dict[str, Any] = {}

    async def answer(request: Any, context: NativeContext) -> Any:
        seen["metadata"] = context.invocation_metadata()
        seen["left"] = context.time_remaining()
        await context.send_initial_metadata((("correlation-id", "c-1"),))
        return sidecar_pb2.HttpResponse(status=200, body=request.path.encode())

    caller = FakeCaller()
    call = NativeUnary(caller, 1, HEADERS, False, "/sidecar.v1.HttpProxy/Call",
                       Method(sidecar_pb2.HttpRequest.FromString, answer), 1024)
    call.caller_data(REQUEST[:7], 7, False)  # split over two DATA frames
    call.caller_data(REQUEST[7:], len(REQUEST) - 7, True)
    await asyncio.sleep(0.05)
    assert seen["metadata"] == [("x-user-id", "alice"), ("blob-bin", b"\x00\x01")]
    assert 0 < seen["left"] <= 0.1
    (_, headers), (_, data), (_, trailers) = caller.sent
    assert (b"correlation-id", b"c-1") in headers
    reply = sidecar_pb2.HttpResponse.FromString(data[5:])
    assert reply.status == 200 and reply.body == b"/"
    assert trailers == {b"grpc-status": b"0"}


@pytest.mark.parametrize(("body", "code", "words"), [
    (b"", b"13", "no request message was sent"),
    (b"\x00\x00\x00\x00\x09abc", b"13", "exactly one whole message"),
    (b"\x01\x00\x00\x00\x01x", b"12", "compressed requests are not supported"),
    (framed(b"\xff\xff\xff"), b"13", "not a valid message"),
])
async def test_bad_framing_is_answered_naming_the_method(body: bytes, code: bytes,
                                                         words: str) -> None:
    async def unreachable(request: Any, context: NativeContext) -> Any:
        raise AssertionError("the handler must not run")

    caller = FakeCaller()
    call = NativeUnary(caller, 1, HEADERS, False, "/sidecar.v1.HttpProxy/Call",
                       Method(sidecar_pb2.HttpRequest.FromString, unreachable), 1024)
    call.caller_data(body, len(body), True)
    [(kind, trailers)] = caller.sent
    assert kind == "trailers" and trailers[b"grpc-status"] == code
    assert trailers[b"grpc-message"].decode().startswith("/sidecar.v1.HttpProxy/Call: ")
    assert words in trailers[b"grpc-message"].decode()


async def test_a_reset_after_the_callers_deadline_cancels_as_a_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller's library resets the stream when its deadline passes: logged as that."""
    monkeypatch.setattr(native, "_DEADLINE_SLACK", 30.0)  # the guard stays out of the way
    reasons: list[object] = []

    async def wait(request: Any, context: NativeContext) -> Any:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError as e:
            reasons.append(e.args[0] if e.args else None)
            raise

    for timeout, reset_after in ((b"10S", 0.0), (b"1m", 0.05)):  # deadline ahead, then gone
        caller = FakeCaller()
        headers = [(n, timeout if n == b"grpc-timeout" else v) for n, v in HEADERS]
        call = NativeUnary(caller, 1, headers, False, "/sidecar.v1.HttpProxy/Call",
                           Method(sidecar_pb2.HttpRequest.FromString, wait), 1024)
        call.caller_data(REQUEST, len(REQUEST), True)
        await asyncio.sleep(reset_after)
        call.caller_reset()
        await asyncio.sleep(0.01)
        assert caller.sent == []  # nothing more goes to a reset stream
    assert reasons == [None, "deadline"]


async def test_a_call_starts_in_the_turn_its_request_ends_and_keeps_its_context_to_itself(
) -> None:
    """A Publish is produced while its request is read, not after the callbacks queued
    behind it; what the call sets in its context stays in its own, as in a Task."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller's")
    seen: list[str] = []

    async def answer(request: Any, context: NativeContext) -> Any:
        seen.append("started")
        var.set("call's")
        await asyncio.sleep(0)  # a bare yield: the call goes on in the next turn
        await asyncio.sleep(0.001)  # a future: when it is done
        seen.append(var.get())
        return sidecar_pb2.HttpResponse(status=204)

    caller = FakeCaller()
    call = NativeUnary(caller, 1, HEADERS, False, "/sidecar.v1.HttpProxy/Call",
                       Method(sidecar_pb2.HttpRequest.FromString, answer), 1024)
    call.caller_data(REQUEST, len(REQUEST), True)
    assert seen == ["started"]  # before this test's coroutine gave the loop a turn
    await asyncio.sleep(0.05)
    assert seen == ["started", "call's"] and var.get() == "caller's"
    assert [kind for kind, _ in caller.sent] == ["headers", "data", "trailers"]


class _NotAFuture:
    def __await__(self) -> Any:
        yield 42


async def test_a_call_that_awaits_what_is_not_a_future_is_answered_as_internal() -> None:
    async def answer(request: Any, context: NativeContext) -> Any:
        await _NotAFuture()
        return sidecar_pb2.HttpResponse(status=200)

    caller = FakeCaller()
    call = NativeUnary(caller, 1, HEADERS, False, "/sidecar.v1.HttpProxy/Call",
                       Method(sidecar_pb2.HttpRequest.FromString, answer), 1024)
    call.caller_data(REQUEST, len(REQUEST), True)
    await asyncio.sleep(0.05)
    (kind, trailers), = caller.sent
    assert kind == "trailers" and trailers[b"grpc-status"] == b"13"
    assert b"internal error in the daemon" in trailers[b"grpc-message"]


async def test_steps_cancel_as_a_task_does_between_steps_and_during_one() -> None:
    """Cancelled while awaiting, the awaited future is cancelled with the reason; cancelled
    from within a step, CancelledError reaches the coroutine at its next await."""
    loop = asyncio.get_running_loop()
    reasons: list[object] = []
    steps: list[native.Steps] = []

    async def waits(cancel_itself: bool) -> None:
        await asyncio.sleep(0)  # `steps` holds this call by now
        if cancel_itself:
            steps[-1].cancel("from within")
        try:
            await loop.create_future()
        except asyncio.CancelledError as e:
            reasons.append(e.args[0] if e.args else None)
            raise

    steps.append(native.Steps(waits(False), loop))
    await asyncio.sleep(0.01)
    assert not steps[-1].done()
    steps[-1].cancel("deadline")
    await asyncio.sleep(0.01)
    assert steps[-1].done()
    steps.append(native.Steps(waits(False), loop))
    await asyncio.sleep(0.01)
    steps[-1].cancel("first")
    steps[-1].cancel("second")  # before the first lands: the last reason is seen, as a Task's
    await asyncio.sleep(0.01)
    steps.append(native.Steps(waits(True), loop))
    await asyncio.sleep(0.01)
    assert all(s.done() for s in steps) and reasons == ["deadline", "second", "from within"]


@pytest.mark.parametrize("late", [False, True])
async def test_the_deadline_runs_from_the_headers_not_from_the_end_of_the_request(
    late: bool,
) -> None:
    # A request whose end never comes (or comes after the caller's 100 ms) is answered
    # DEADLINE_EXCEEDED at its deadline, the handler never run and the buffer let go.
    async def unreachable(request: Any, context: NativeContext) -> Any:
        raise AssertionError("the handler must not run")

    caller = FakeCaller()
    refused: list[bytes] = []
    call = NativeUnary(caller, 1, HEADERS, False, "/sidecar.v1.HttpProxy/Call",
                       Method(sidecar_pb2.HttpRequest.FromString, unreachable), 1024,
                       lambda name, headers, code: refused.append(code.name.encode()))
    call.caller_data(REQUEST[:7], 7, False)
    await asyncio.sleep(0.4)
    if late:
        call.caller_data(REQUEST[7:], len(REQUEST) - 7, True)  # too late: ignored
    [(kind, trailers)] = caller.sent
    assert kind == "trailers" and trailers[b"grpc-status"] == b"4"
    assert trailers[b"grpc-message"] == (b"/sidecar.v1.HttpProxy/Call: deadline exceeded "
                                         b"before the request was complete")
    assert caller.finished and refused == [b"DEADLINE_EXCEEDED"]


async def test_requests_not_yet_complete_are_bounded_per_listener_and_given_back() -> None:
    async def answer(request: Any, context: NativeContext) -> Any:
        return sidecar_pb2.HttpResponse(status=200)

    caller = FakeCaller()
    held = native.HeldBytes(len(REQUEST) + 10)
    method = Method(sidecar_pb2.HttpRequest.FromString, answer)
    first = NativeUnary(caller, 1, HEADERS, False, "/sidecar.v1.HttpProxy/Call", method, 1024,
                        None, held)
    first.caller_data(REQUEST[:-1], len(REQUEST) - 1, False)  # incomplete, held
    second = NativeUnary(caller, 3, HEADERS, False, "/sidecar.v1.HttpProxy/Call", method,
                         1024, None, held)
    second.caller_data(REQUEST[:20], 20, False)  # would pass the listener's bound
    [(kind, trailers)] = caller.sent
    assert kind == "trailers" and trailers[b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED
    assert b"listeners[].max_request_buffer" in trailers[b"grpc-message"]
    assert held.held == len(REQUEST) - 1  # the refused call gave its bytes back
    first.caller_data(REQUEST[-1:], 1, True)  # complete: decoded, no longer held
    assert held.held == 0
    third = NativeUnary(caller, 5, HEADERS, False, "/sidecar.v1.HttpProxy/Call", method, 1024,
                        None, held)
    third.caller_data(REQUEST[:30], 30, False)
    third.caller_reset()  # the caller went away: given back too
    assert held.held == 0
    await asyncio.sleep(0.05)
    assert [k for k, _ in caller.sent] == ["trailers", "headers", "data", "trailers"]
