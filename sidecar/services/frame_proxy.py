"""The transparent proxy on the frame engine: one caller stream, its upstream attempts.

`context`, `routing` and `resilience` decide; this module moves frames. The request's
DATA is kept until END_STREAM (bounded by the target's `limits.max_message`) and
replayed on a retry; the response's HEADERS are held until its first DATA or its
trailers, so a retry stays possible until the caller has seen a message, never after.
Transport failures are known from our engine's events.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.context import CallContext
from sidecar.engine.events import Headers
from sidecar.engine.frames import ErrorCode
from sidecar.engine.status_block import error_block
from sidecar.errors import (
    LimitExceededError,
    SidecarError,
    UpstreamLostError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from sidecar.resilience.backoff import grpc_pushback
from sidecar.resilience.policy import Attempt
from sidecar.runtime import Runtime
from sidecar.services.call import CallScope
from sidecar.services.message_bound import MessageBound
from sidecar.status import BY_NUMBER, StatusCode
from sidecar.telemetry.hub import Telemetry
from sidecar.telemetry.logging import CALL_FIELDS
from sidecar.upstreams.grpc import PUSHBACK_KEY, classify, upstream_metadata

if TYPE_CHECKING:
    from sidecar.config import GrpcTarget
    from sidecar.engine.client import UpstreamConnection
    from sidecar.engine.pool import UpstreamPool
    from sidecar.engine.server import CallerConnection

log = logging.getLogger("sidecar.proxy")
_CODES = BY_NUMBER
_OK = StatusCode.OK
_CORRELATION = b"correlation-id"
_STATUS = b"grpc-status"
_PUSHBACK = PUSHBACK_KEY.encode()
# Caller headers re-sent as they are: they describe the messages, which pass untouched.
_TRANSPORT = frozenset({b"content-type", b"grpc-encoding", b"grpc-accept-encoding",
                        b"user-agent"})
_UNKNOWN_LIMIT = 1 << 62
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# RST_STREAM codes as gRPC statuses (the gRPC HTTP/2 protocol document).
_RESET_STATUS: dict[int, StatusCode] = {
    ErrorCode.CANCEL: StatusCode.CANCELLED,
    ErrorCode.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
}


class FrameProxy:
    """Every proxied stream of one listener."""

    def __init__(self, listener: str, runtime: Callable[[], Runtime],
                 telemetry: Telemetry) -> None:
        self.listener = listener
        self.runtime = runtime
        self.telemetry = telemetry

    def stream(self, conn: CallerConnection, stream_id: int, headers: Headers,
               path: bytes, end_stream: bool) -> ProxiedCall:
        return ProxiedCall(self, conn, stream_id, headers, path, end_stream)


class ProxiedCall:
    """One caller stream across its upstream attempts (caller side and upstream side).

    Run without a task in the common case: the call starts inside the caller's batch
    (its HEADERS), the first attempt opens on a ready pooled connection, and the answer
    is given inside the upstream's batch, so a call costs no extra loop turn. A task is
    made only to wait: for a connection, or out a retry's backoff."""

    __slots__ = (
        "_aborted",
        "_attempt_started",
        "_bound_in",
        "_bound_out",
        "_chunks",
        "_code",
        "_committed",
        "_conn",
        "_ctx",
        "_deadline",
        "_details",
        "_error",
        "_finished",
        "_headers",
        "_headers_sent",
        "_kept",
        "_last",
        "_lengths",
        "_limit",
        "_method",
        "_policy",
        "_pool",
        "_proxy",
        "_replayable",
        "_req_ended",
        "_request",
        "_response",
        "_retries",
        "_retry_on",
        "_scope",
        "_sid",
        "_started",
        "_target",
        "_target_name",
        "_task",
        "_timer",
        "_trace_at",
        "_trailers",
        "_trial",
        "_unique",
        "_up",
        "_up_sid",
    )

    def __init__(self, proxy: FrameProxy, conn: CallerConnection, stream_id: int,
                 headers: Headers, path: bytes, end_stream: bool) -> None:
        self._proxy = proxy
        self._conn = conn
        self._sid = stream_id
        self._headers = headers
        self._req_ended = end_stream
        self._chunks: list[memoryview | bytes] = []
        self._lengths: list[int] = []  # flow-controlled bytes not yet acknowledged
        self._kept = 0
        self._limit = _UNKNOWN_LIMIT  # until the target is known
        self._replayable = True
        self._committed = False
        self._headers_sent = False
        self._finished = False
        self._aborted: SidecarError | None = None  # the daemon's answer instead of the call's
        self._bound_in = MessageBound(_UNKNOWN_LIMIT)
        self._bound_out = MessageBound(_UNKNOWN_LIMIT)
        self._up: UpstreamConnection | None = None
        self._up_sid = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._trial: bool | None = None  # an attempt is under way (the breaker's trial flag)
        self._last: Attempt | None = None
        self._retries = 0
        self._response: Headers | None = None
        self._trailers: Headers | None = None
        self._code = StatusCode.UNKNOWN
        self._details = ""
        self._error: SidecarError | None = None
        self._request: tuple[tuple[bytes, bytes], ...] = ()
        self._unique: Headers = []
        self._trace_at = 0
        self._target_name: str | None = None
        self._method = method = path.decode("latin-1")
        self._started = time.monotonic()
        listener = proxy.listener
        try:
            metadata, timeout, transport = _caller_metadata(headers)
            scope = self._scope = CallScope(proxy.telemetry, proxy.runtime(), listener, method,
                                            metadata, conn.peer, self._started)
            ctx = self._ctx = scope.ctx
        except Exception:  # a fault of ours before the call could be logged as one
            log.exception("proxied call failed", extra={"fields": {
                "listener": listener, "method": method}})
            self._finished = True
            conn.send_trailers(stream_id, error_block(
                StatusCode.INTERNAL.number, "internal error in the daemon (see its log)",
                False))
            conn.finish(stream_id, not end_stream)
            return
        try:
            scope.admit()  # peer, user id, rate limit
            target = self._target_name = scope.route()
            upstream, policy = scope.open(target, "grpc")
            self._policy = policy
            config = self._target = upstream.target
            pool = self._pool = upstream.pool()
            self._retry_on = upstream.retry_on
            self._limit = self._bound_in.limit = self._bound_out.limit = (
                config.limits.max_message)
            self._build_request(method, pool, transport, ctx, config)
            self._deadline = scope.deadline(timeout)
            policy.begin()
            self._next_attempt()
        except SidecarError as e:
            self._fail(e)
        except Exception:
            self._internal_error()
        finally:
            CALL_FIELDS.set(None)  # telemetry.begin set it in this connection's context

    # -- the call -------------------------------------------------------------------------

    def _build_request(self, method: str, pool: UpstreamPool, transport: Headers,
                       ctx: CallContext, target: GrpcTarget) -> None:
        """The upstream request headers, once per call: those the same from call to call,
        and those unique to it (ids, trace context, time left: kept out of the HPACK table),
        where attempts fill in their own traceparent and grpc-timeout."""
        request: Headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode("latin-1")),
            (b":authority", pool.authority), (b"te", b"trailers"), *transport,
        ]
        if not any(name == b"content-type" for name, _ in transport):
            request.append((b"content-type", b"application/grpc"))
        names = target.metadata
        unique_names = (names.correlation_id, names.request_id, "traceparent", "tracestate",
                        "authorization")
        unique: Headers = []
        for key, value in upstream_metadata(ctx, target):
            if key in unique_names:
                if key == "traceparent":
                    self._trace_at = len(unique)
                unique.append((key.encode("latin-1"), _encode(value)))
            else:
                request.append((key.encode("latin-1"), _encode(value)))
        unique.append((b"grpc-timeout", b""))
        self._request = tuple(request)
        self._unique = unique

    def _next_attempt(self) -> None:
        """Start one upstream try: at once on a ready connection, else in a task that
        waits for one. Raises SidecarError when none may be made."""
        policy = self._policy
        trial = policy.start_attempt()
        if trial is None:
            if self._last is None:
                raise policy.circuit_open()
            self._conclude()  # the circuit opened meanwhile: the last answer stands
            return
        self._trial = trial
        now = self._attempt_started = time.monotonic()
        time_left = policy.time_left(self._deadline, now)
        self._response = self._trailers = None
        self._error = None
        self._code = StatusCode.UNKNOWN
        self._details = ""
        traceparent = self._ctx.begin_attempt(self._policy)
        conn = self._pool.ready()
        if conn is None:
            self._task = self._conn.loop.create_task(self._connect(time_left, traceparent))
        else:
            self._open(conn, time_left, traceparent)

    async def _connect(self, time_left: float, traceparent: str) -> None:
        try:
            # Not wait_for: on 3.11 it runs the wait in a task of its own, whose result
            # reaches us a loop turn later, when other streams may have filled `conn`.
            async with asyncio.timeout(time_left):
                conn = await self._pool.connection(time_left)
        except TimeoutError:
            self._timed_out()
            self._settle()
        except UpstreamUnavailableError as e:
            self._code = StatusCode.UNAVAILABLE
            self._error = e
            self._settle()
        except asyncio.CancelledError:
            return  # the call ended meanwhile (`_cancel` did what was needed)
        except Exception:
            self._internal_error()
        else:
            self._task = None
            if self._trial is not None and not self._finished:
                self._open(conn, time_left - (time.monotonic() - self._attempt_started),
                           traceparent)

    def _open(self, conn: UpstreamConnection, time_left: float, traceparent: str) -> None:
        unique = self._unique.copy()
        unique[self._trace_at] = (b"traceparent", traceparent.encode())
        unique[-1] = (b"grpc-timeout", _grpc_timeout(max(time_left, 0.0)))
        chunks = self._chunks
        self._up = conn
        self._timer = self._conn.loop.call_later(time_left, self._expire)
        sid = self._up_sid = conn.open(self, self._request, self._req_ended and not chunks,
                                       unique)
        if chunks:
            lengths = self._lengths
            last = len(chunks) - 1
            caller, caller_sid = self._conn, self._sid
            for i, chunk in enumerate(chunks):
                conn.send_data(sid, chunk, self._req_ended and i == last, caller, caller_sid,
                               lengths[i])
                lengths[i] = 0
            if not self._replayable:
                self._release_request()

    def _settle(self) -> None:
        """The attempt under way came to its end (its status, reset, loss or deadline)."""
        trial = self._trial
        if trial is None or self._finished:
            return
        ctx = self._ctx
        # Lines logged meanwhile (the breaker's) are the call's, as in a task of its own.
        token = CALL_FIELDS.set((ctx.correlation_id, ctx.trace_id, ctx.span_id))
        try:
            self._trial = None
            self._task = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._close_upstream()
            error = self._error
            if error is None:  # the upstream's own status
                ctx.end_attempt(None if self._code is _OK else self._code.name,
                                self._code.number)
            else:
                ctx.end_attempt(error)
            verdict = classify(self._code, self._error, self._retry_on)
            verdict.committed = self._committed
            verdict.retryable = verdict.retryable and self._replayable
            if verdict.retryable and self._trailers is not None:
                for name, value in self._trailers:
                    if name == _PUSHBACK:
                        verdict.pushback = grpc_pushback(value.decode("latin-1"))
            policy = self._policy
            policy.end_attempt(verdict, trial)
            self._last = verdict
            delay = policy.retry_delay(self._retries + 1, verdict, self._deadline,
                                       self._attempt_started)
            if delay is None:
                self._conclude()
            else:
                self._retries += 1
                self._task = self._conn.loop.create_task(self._retry_after(delay))
        except Exception:
            self._internal_error()
        finally:
            CALL_FIELDS.reset(token)

    async def _retry_after(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            return
        self._task = None
        try:
            self._next_attempt()
        except SidecarError as e:
            self._fail(e)
        except Exception:
            self._internal_error()

    def _conclude(self) -> None:
        """The last attempt's answer is the call's."""
        try:
            status = self._deliver()
        except SidecarError as e:
            self._fail(e)
            return
        self._end(status)

    def _fail(self, error: SidecarError) -> None:
        """The call ends with the daemon's own answer."""
        if self._finished:
            return
        self._scope.failed(error)
        status = error.grpc_status
        self._send_status(status.number, str(error), error.trailers)
        self._end(status)

    def _internal_error(self) -> None:
        """A fault of ours: the caller is answered INTERNAL and the call logged."""
        if self._finished:
            return
        target = self._target_name
        log.exception("proxied call failed", extra={"fields": {
            "listener": self._proxy.listener, "method": self._method, "target": target,
            "correlation_id": self._ctx.correlation_id}})
        self._stop_attempt()
        status = StatusCode.INTERNAL
        self._send_status(status.number, f"target {target!r}: internal error in the daemon "
                                           "(see its log)")
        self._end(status)

    def _end(self, status: StatusCode) -> None:
        if self._finished:
            return
        self._finished = True
        task = self._task
        if task is not None:
            self._task = None
            task.cancel()
        self._release_request()
        self._conn.finish(self._sid, not self._req_ended)
        self._scope.end(status)

    def _stop_attempt(self) -> None:
        """Give up the attempt under way (the call is ending): nothing of it counts."""
        trial = self._trial
        if trial is not None:
            self._trial = None
            self._policy.breaker.abandon(trial)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_upstream()

    def _deliver(self) -> StatusCode:
        """Give the caller the final attempt's answer (streamed already once committed)."""
        if self._error is not None:
            raise self._error
        if not self._committed:
            conn, sid = self._conn, self._sid
            correlation = [(_CORRELATION, self._ctx.correlation_id.encode())]
            if self._response is not None:
                conn.send_headers(sid, _without_correlation(self._response), False, correlation)
                if self._trailers is not None:
                    conn.send_trailers(sid, self._trailers)
            elif self._trailers is not None:  # trailers-only
                conn.send_headers(sid, _without_correlation(self._trailers), True, correlation)
            self._headers_sent = True
        return self._code

    def _send_status(self, code: int, message: str,
                     trailers: tuple[tuple[str, str], ...] = ()) -> None:
        """The daemon's own answer: trailers-only, or trailers once headers went out."""
        extra = [] if self._headers_sent else [
            (_CORRELATION, self._ctx.correlation_id.encode())]
        extra += [(k.encode(), v.encode()) for k, v in trailers]
        self._conn.send_trailers(self._sid, error_block(code, message, self._headers_sent,
                                                        extra))
        self._headers_sent = True

    # -- caller side ----------------------------------------------------------------------

    def caller_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        if end_stream:
            self._req_ended = True
        up = self._up
        if self._finished or self._aborted is not None:
            self._conn.acknowledge(self._sid, length)
        elif self._bound_in.over(data):
            self._conn.acknowledge(self._sid, length)
            self._stop(self._too_large("request", self._bound_in))
        elif up is not None:
            self._ctx.request_bytes += len(data)
            up.send_data(self._up_sid, data, end_stream, self._conn, self._sid, length)
            if self._replayable:
                self._keep(data, 0)
        else:
            self._ctx.request_bytes += len(data)
            self._keep(data, length)

    def _keep(self, data: memoryview | bytes, length: int) -> None:
        self._chunks.append(data)
        self._lengths.append(length)
        self._kept += len(data)
        if self._kept > self._limit:
            self._replayable = False

    def _release_request(self) -> None:
        """Replay is over: acknowledge what was held and keep nothing more."""
        conn, sid = self._conn, self._sid
        for length in self._lengths:
            if length:
                conn.acknowledge(sid, length)
        self._chunks = []
        self._lengths = []

    def caller_reset(self) -> None:
        """The caller reset the stream (or its connection is gone): cancel upstream."""
        self._headers_sent = True  # nothing more may be sent on the caller's stream
        self._cancel()

    def caller_abort(self, message: str) -> None:
        """The listener's drain deadline passed: answer UNAVAILABLE, cancel upstream."""
        self._stop(_UpstreamStatus(StatusCode.UNAVAILABLE, message))

    def _stop(self, answer: SidecarError) -> None:
        """End the call with the daemon's own answer (the upstream stream is cancelled)."""
        if self._aborted is None:
            self._aborted = answer
            self._cancel()

    def _cancel(self) -> None:
        """The call ends now: the daemon's answer if it has one (`_stop`), else CANCELLED."""
        if self._finished:
            return
        self._stop_attempt()
        aborted = self._aborted
        if aborted is None:
            self._end(StatusCode.CANCELLED)
        else:
            status = aborted.grpc_status
            self._send_status(status.number, str(aborted))
            self._end(status)

    def _too_large(self, way: str, bound: MessageBound) -> LimitExceededError:
        return LimitExceededError(
            f"target {self._target.name!r}: {way} message of {bound.size} bytes is over the "
            f"{bound.limit}-byte limit (limits.max_message)")

    # -- upstream side --------------------------------------------------------------------

    def up_response(self, headers: Headers, end_stream: bool) -> None:
        if end_stream:
            self.up_trailers(headers)
        else:
            self._response = headers

    def up_data(self, data: memoryview | bytes, length: int, end_stream: bool) -> None:
        if self._aborted is not None or self._bound_out.over(data):
            up = self._up
            if up is not None:
                up.acknowledge(self._up_sid, length)
            self._stop(self._too_large("response", self._bound_out))
            return
        conn = self._conn
        self._ctx.response_bytes += len(data)
        if not self._committed:
            self._committed = True
            self._headers_sent = True
            self._replayable = False
            self._release_request()
            correlation = [(_CORRELATION, self._ctx.correlation_id.encode())]
            conn.send_headers(self._sid, _without_correlation(self._response or []), False,
                              correlation)
        conn.send_data(self._sid, data, False, self._up, self._up_sid, length)
        if end_stream:  # DATA ending the stream: the upstream sent no status
            self._up = None
            self._code = StatusCode.INTERNAL
            self._error = UpstreamUnavailableError(
                f"target {self._target.name!r}: response ended without a status")
            self._settle()

    def up_trailers(self, headers: Headers) -> None:
        self._up = None
        if self._aborted is not None:  # the daemon answers instead
            return
        code = StatusCode.UNKNOWN
        for name, value in headers:
            if name == _STATUS:
                code = _CODES.get(int(value) if value.isdigit() else -1, code)
                break
        self._code = code
        self._trailers = headers
        if self._committed:
            self._conn.send_trailers(self._sid, headers)
        self._settle()

    def up_reset(self, code: int) -> None:
        self._up = None
        name = self._target.name
        if code == ErrorCode.REFUSED_STREAM:
            self._code = StatusCode.UNAVAILABLE
            self._error = UpstreamUnavailableError(f"target {name!r} unreachable: stream refused")
        else:
            self._code = _RESET_STATUS.get(code, StatusCode.INTERNAL)
            self._error = _UpstreamStatus(self._code, f"target {name!r} reset the stream "
                                                      f"(HTTP/2 error {code})")
            self._error.flag = "UR"  # Envoy's upstream remote reset
        self._settle()

    def up_lost(self, reason: str) -> None:
        self._up = None
        self._code = StatusCode.UNAVAILABLE
        self._error = UpstreamLostError(
            f"target {self._target.name!r} unreachable: {reason}")
        self._settle()

    def _expire(self) -> None:
        self._timer = None
        self._close_upstream()
        self._timed_out()
        self._settle()

    def _timed_out(self) -> None:
        self._code = StatusCode.DEADLINE_EXCEEDED
        self._error = UpstreamTimeoutError(f"target {self._target.name!r}: deadline exceeded")

    def _close_upstream(self) -> None:
        up = self._up
        if up is not None:
            self._up = None
            up.finish(self._up_sid, cancel=True)


class _UpstreamStatus(SidecarError):
    """A status the upstream caused without sending one (it reset the stream)."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.grpc_status = code


def _caller_metadata(
    headers: Headers,
) -> tuple[list[tuple[str, str | bytes]], float | None, Headers]:
    """Metadata as text (`-bin` values stay the wire's base64), grpc-timeout in seconds,
    and the transport headers re-sent upstream, in one pass."""
    metadata: list[tuple[str, str | bytes]] = []
    transport: Headers = []
    timeout = None
    for name, value in headers:
        if name[:1] == b":":
            continue
        if name in _TRANSPORT:
            transport.append((name, value))
        elif name == b"grpc-timeout":
            timeout = parse_timeout(value)
        else:
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
    return metadata, timeout, transport


def parse_timeout(value: bytes) -> float | None:
    """A `grpc-timeout` value in seconds; None when it is not one."""
    unit = _UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def _grpc_timeout(seconds: float) -> bytes:
    """Time left as grpc-timeout, rounded up (at most 8 digits)."""
    micros = math.ceil(seconds * 1e6)
    if micros < 100_000_000:
        return b"%du" % max(micros, 1)
    millis = math.ceil(seconds * 1e3)
    if millis < 100_000_000:
        return b"%dm" % millis
    return b"%dS" % min(math.ceil(seconds), 99_999_999)


def _encode(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def _without_correlation(headers: Headers) -> Headers:
    """The upstream's headers without its correlation-id: the caller gets the call's."""
    return [kv for kv in headers if kv[0] != _CORRELATION]
