"""The daemon's own unary methods served on the engine, without a grpcio server on the path.

`HttpProxy/Call`, `Publisher/Publish`, `Publisher/PublishBatch` and `Health/Check` are
answered here: the request message is collected from the caller's DATA (bounded by
`limits.max_message`), decoded once with the generated protobuf class (upb), handed to
the daemon's servicer methods through `NativeContext` (the four things they ask of a
gRPC ServicerContext), and the response is encoded once, with status and trailers written
by the engine. Streaming methods (`Health/Watch`, reflection) are in native_stream.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import logging
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from sidecar.engine.events import Headers
from sidecar.engine.status_block import error_block
from sidecar.services.api_call import DEADLINE_CANCEL
from sidecar.services.frame_proxy import parse_timeout
from sidecar.status import StatusCode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sidecar.engine.peer import Peer

log = logging.getLogger("sidecar.native")

PREFIX = struct.Struct(">BI")  # gRPC message framing: compressed flag, length
# A tuple: the header codec keys the blocks it remembers by the fixed fields (hpack.py).
RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
OK_TRAILERS: Headers = [(b"grpc-status", b"0")]
_DEADLINE_SLACK = 0.05  # seconds past the caller's deadline before we answer for the handler


Refused = Callable[[str, Headers, StatusCode], None]


class Method(NamedTuple):
    """A unary method: how its request is decoded and who answers it."""

    decode: Callable[[bytes], Any]
    handler: Callable[[Any, NativeContext], Awaitable[Any]]


class Abort(Exception):
    """`context.abort(code, details)`: the call ends with this status."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class NativeContext:
    """What the daemon's servicers ask of a gRPC ServicerContext, for one native call."""

    __slots__ = ("_deadline", "_loop", "_metadata", "_peer", "initial_metadata",
                 "trailing_metadata")

    def __init__(self, metadata: list[tuple[str, str | bytes]], deadline: float | None,
                 loop: asyncio.AbstractEventLoop, peer: Peer | None = None) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._loop = loop
        self._peer = peer
        self.initial_metadata: list[tuple[str, str]] = []
        self.trailing_metadata: list[tuple[str, str]] = []

    @property
    def peer(self) -> Peer | None:
        """The caller connection's credentials (SO_PEERCRED), read when it was accepted."""
        return self._peer

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.trailing_metadata = [(str(k), str(v)) for k, v in metadata]

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - self._loop.time(), 0.0)

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.initial_metadata = [(str(k), str(v)) for k, v in metadata]

    async def abort(self, code: StatusCode, details: str = "") -> None:
        raise Abort(code, details)


class Steps:
    """Runs one native call's coroutine without an asyncio Task: its first step at once
    (from the caller's `data_received`, so a Publish is produced in the turn its request
    was read rather than after the callbacks already queued), the others when what it
    awaits is done. A Task costs its allocation, a scheduled first step and a registration
    in asyncio's WeakSet of tasks (Python code, about 3% of an HttpProxy call's CPU).

    What a call's code may not do, then: use `asyncio.timeout` or anything else that needs
    `asyncio.current_task()` (there is none); `asyncio.wait_for` and the rest work. It runs
    in a context of its own, copied at its start, as a Task's would.
    """

    __slots__ = ("_cancel", "_context", "_coro", "_finished", "_loop", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop,
                 ) -> None:
        self._coro = coro
        self._loop = loop
        self._context = contextvars.copy_context()
        self._waiting: asyncio.Future[Any] | None = None
        self._cancel: BaseException | None = None  # to throw in at the next step
        self._finished = False
        self._step()

    def done(self) -> bool:
        return self._finished

    def cancel(self, reason: str | None = None) -> None:
        """As `Task.cancel`: what the coroutine awaits is cancelled (it sees CancelledError
        with `reason`), or, if that is already done, CancelledError is thrown in at the next
        step (so a second cancel's reason is the one seen, as with a Task)."""
        if self._finished:
            return
        waiting = self._waiting
        if waiting is not None and waiting.cancel(reason):
            return
        self._cancel = asyncio.CancelledError(*(() if reason is None else (reason,)))

    def _step(self, _done: object = None) -> None:
        self._waiting = None
        coro, cancel = self._coro, self._cancel
        try:
            if cancel is None:
                awaited = self._context.run(coro.send, None)
            else:
                self._cancel = None
                awaited = self._context.run(coro.throw, cancel)
        except (StopIteration, asyncio.CancelledError):  # returned, or let the cancel out
            self._finished = True
            return
        except BaseException:  # _run answers every Exception; this is KeyboardInterrupt & co
            self._finished = True
            raise
        if awaited is None:  # a bare yield (asyncio.sleep(0)): the next turn
            self._loop.call_soon(self._step)
            return
        # A Future's __await__ marks itself blocking and yields itself (the protocol a Task
        # follows: asyncio.isfuture reads the same attribute). Anything else is a bug in the
        # call's code, thrown back into it as a Task does, so the call is still answered.
        if not getattr(awaited, "_asyncio_future_blocking", False):
            self._cancel = RuntimeError(f"a native call yielded {awaited!r}, not a future")
            self._loop.call_soon(self._step)
            return
        awaited._asyncio_future_blocking = False
        self._waiting = awaited
        awaited.add_done_callback(self._step)
        cancel = self._cancel
        if cancel is not None and awaited.cancel(*cancel.args):  # cancelled during the step
            self._cancel = None


class Caller(Protocol):
    """What a native call uses of its caller's connection: engine/server.py's
    CallerConnection (a structural type, so a test can record what is sent)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def peer(self) -> Peer | None: ...
    def acknowledge(self, stream_id: int, length: int) -> None: ...
    def send_headers(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]],
                     end_stream: bool = False,
                     unique: Sequence[tuple[bytes, bytes]] = ()) -> None: ...
    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None: ...
    def send_trailers(self, stream_id: int, headers: Headers) -> None: ...
    def finish(self, stream_id: int, request_open: bool) -> None: ...


class HeldBytes:
    """What the native calls of one listener hold of requests not yet complete, bounded by
    `listeners[].max_request_buffer`: a call that would pass it is refused, so callers that
    open many streams and never end their requests cannot grow the daemon without bound
    (each is bounded by `max_message` and the caller's deadline, not their sum)."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


class NativeUnary:
    """One caller stream of a unary method the daemon answers itself."""

    __slots__ = ("_buffer", "_conn", "_context", "_deadline", "_ended", "_finished",
                 "_headers", "_held", "_limit", "_metadata", "_method", "_name", "_refused",
                 "_sid", "_target", "_task", "_timer")

    def __init__(self, conn: Caller, stream_id: int, headers: Headers,
                 end_stream: bool, name: str, method: Method, max_message: int,
                 refused: Refused | None = None, held: HeldBytes | None = None) -> None:
        self._conn = conn
        self._sid = stream_id
        self._headers = headers
        self._name = name
        self._method = method
        self._limit = max_message
        self._buffer = bytearray()
        self._ended = False
        self._finished = False
        self._task: Steps | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._context: NativeContext | None = None
        self._target = ""  # the request's target, once decoded
        self._refused = refused  # logs a call answered before its handler ran
        self._held = held
        # The caller's deadline runs from its HEADERS, not from the end of its request: a
        # request that never ends is answered DEADLINE_EXCEEDED, and what it holds let go.
        self._metadata, timeout = caller_metadata(headers)
        self._deadline = None
        if timeout is not None:
            loop = conn.loop
            self._deadline = loop.time() + timeout
            self._timer = loop.call_later(timeout + _DEADLINE_SLACK, self._expire)
        if end_stream:
            self.caller_data(b"", 0, True)

    # -- caller side ----------------------------------------------------------------------

    def caller_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        conn = self._conn
        conn.acknowledge(self._sid, length)  # held here, bounded by the message limit
        if self._finished or self._ended:
            return
        buffer = self._buffer
        buffer += data
        held = self._held
        if held is not None:
            held.held += len(data)  # given back by _let_go, with the buffer
        if len(buffer) > self._limit + PREFIX.size:
            self._let_go()
            self._refuse(StatusCode.RESOURCE_EXHAUSTED,
                               f"{self._name}: request message of over {self._limit} bytes "
                               "is over the limit (limits.max_message)")
            return
        if held is not None and held.held > held.limit:
            self._let_go()
            self._refuse(StatusCode.RESOURCE_EXHAUSTED,
                         f"{self._name}: the listener holds {held.limit} bytes of requests "
                         "not yet complete (listeners[].max_request_buffer)")
            return
        if end_stream:
            self._ended = True
            self._start()

    def caller_reset(self) -> None:
        """The caller reset the stream or its connection is gone: the call is cancelled,
        logged CANCELLED by the servicer's call wrapper, or DEADLINE_EXCEEDED when the
        reset came once the caller's deadline had passed (its library resets then)."""
        self._finished = True
        self._let_go()
        context = self._context
        remaining = None if context is None else context.time_remaining()
        self._cancel(DEADLINE_CANCEL if remaining == 0.0 else None)

    def caller_abort(self, message: str) -> None:
        """The listener's drain deadline passed."""
        if not self._finished:
            started = self._task is not None
            self._cancel(None)
            if started:  # the handler's call wrapper logs it
                self._answer_error(StatusCode.UNAVAILABLE, message)
            else:
                self._refuse(StatusCode.UNAVAILABLE, message)

    # -- the call -------------------------------------------------------------------------

    def _start(self) -> None:
        request_bytes = self._message()
        if request_bytes is None:
            return
        try:
            request = self._method.decode(request_bytes)
        except DecodeError:
            self._refuse(StatusCode.INTERNAL,
                               f"{self._name}: the request is not a valid message")
            return
        self._target = str(getattr(request, "target", ""))
        loop = self._conn.loop
        context = self._context = NativeContext(self._metadata, self._deadline, loop,
                                                self._conn.peer)
        self._task = Steps(self._run(request, context), loop)

    def _let_go(self) -> None:
        """Drop what the request holds (it is complete, or the call is over)."""
        held = self._held
        if held is not None:
            held.held -= len(self._buffer)
        self._buffer = bytearray()

    def _message(self) -> bytes | None:
        buffer = self._buffer
        self._let_go()
        if len(buffer) < PREFIX.size:
            self._refuse(StatusCode.INTERNAL,
                               f"{self._name}: no request message was sent")
            return None
        compressed, size = PREFIX.unpack_from(buffer)
        if compressed:
            self._refuse(StatusCode.UNIMPLEMENTED,
                               f"{self._name}: compressed requests are not supported",
                               [(b"grpc-accept-encoding", b"identity")])
            return None
        if size != len(buffer) - PREFIX.size:
            self._refuse(StatusCode.INTERNAL,
                               f"{self._name}: a unary call takes exactly one whole message")
            return None
        return bytes(memoryview(buffer)[PREFIX.size:])

    async def _run(self, request: Any, context: NativeContext) -> None:
        try:
            response = await self._method.handler(request, context)
        except Abort as e:
            self._answer_error(e.code, e.details, _metadata_block(
                context.initial_metadata + context.trailing_metadata))
        except asyncio.CancelledError:
            return  # the caller is gone, or the answer was given for the handler
        except Exception:  # a fault of ours: answered, logged, never a hang
            log.exception("native call failed", extra={"fields": {"method": self._name}})
            self._answer_error(StatusCode.INTERNAL,
                               f"{self._name}: internal error in the daemon (see its log)")
        else:
            self._answer(response.SerializeToString(), context)

    def _expire(self) -> None:
        """The handler outlived the caller's deadline: answer for it (the servicers answer
        before it themselves; this is the guarantee that no call hangs)."""
        self._timer = None
        if self._finished:
            return
        if self._task is None:  # the request is not complete: the handler never ran
            self._let_go()
            self._refuse(StatusCode.DEADLINE_EXCEEDED,
                         f"{self._name}: deadline exceeded before the request was complete")
        else:
            self._cancel(DEADLINE_CANCEL)
            where = f"target {self._target!r}" if self._target else self._name
            self._answer_error(StatusCode.DEADLINE_EXCEEDED, f"{where}: deadline exceeded")

    def _cancel(self, reason: str | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None and not task.done():
            task.cancel(reason)

    # -- answers --------------------------------------------------------------------------

    def _answer(self, payload: bytes, context: NativeContext) -> None:
        if self._finished:
            return
        conn, sid = self._conn, self._sid
        # The initial metadata is the call's correlation id: unique to it (hpack.py).
        conn.send_headers(sid, RESPONSE_HEADERS, False, _metadata_block(context.initial_metadata))
        conn.send_data(sid, PREFIX.pack(0, len(payload)) + payload, False)
        conn.send_trailers(sid, OK_TRAILERS)
        self._end()

    def _refuse(self, code: StatusCode, message: str,
                extra: Headers | None = None) -> None:
        """Answer before the handler ran, and log the call (its wrapper never saw it)."""
        if self._finished:
            return
        self._answer_error(code, message, extra)
        if self._refused is not None:
            self._refused(self._name, self._headers, code)

    def _answer_error(self, code: StatusCode, message: str,
                      extra: Headers | None = None) -> None:
        if self._finished:
            return
        self._conn.send_trailers(self._sid, error_block(code.number, message, False, extra))
        self._end()

    def _end(self) -> None:
        self._finished = True
        self._let_go()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._conn.finish(self._sid, not self._ended)


def _metadata_block(metadata: list[tuple[str, str]]) -> Headers:
    return [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in metadata]


def caller_metadata(headers: Headers) -> tuple[list[tuple[str, str | bytes]], float | None]:
    """Metadata as grpc.aio gives it (text, `-bin` values decoded) and grpc-timeout."""
    metadata: list[tuple[str, str | bytes]] = []
    timeout = None
    for name, value in headers:
        if name[:1] == b":":
            continue
        if name == b"grpc-timeout":
            timeout = parse_timeout(value)
        elif name.endswith(b"-bin"):
            try:
                metadata.append((name.decode("latin-1"), base64.b64decode(value + b"==")))
            except (binascii.Error, ValueError):
                continue  # not base64: dropped, as grpc-core drops it
        elif name not in (b"te", b"content-type", b"user-agent", b"grpc-accept-encoding",
                          b"grpc-encoding"):
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
    return metadata, timeout


def methods(http: Any, publisher: Any, health: Any) -> dict[bytes, tuple[str, Method]]:
    """The native unary methods by `:path`, answered by these servicers."""
    from grpc_health.v1 import health_pb2

    from sidecar.v1 import sidecar_pb2

    table = {
        "/sidecar.v1.HttpProxy/Call": Method(sidecar_pb2.HttpRequest.FromString, http.Call),
        "/sidecar.v1.Publisher/Publish": Method(sidecar_pb2.PublishRequest.FromString,
                                                publisher.Publish),
        "/sidecar.v1.Publisher/PublishBatch": Method(
            sidecar_pb2.PublishBatchRequest.FromString, publisher.PublishBatch),
        "/sidecar.v1.Publisher/Status": Method(sidecar_pb2.PublishStatusRequest.FromString,
                                               publisher.Status),
        "/grpc.health.v1.Health/Check": Method(health_pb2.HealthCheckRequest.FromString,
                                               health.Check),
    }
    return {path.encode(): (path, method) for path, method in table.items()}
