"""The caller's request messages, fed to the current attempt and kept for a retry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc


class RequestReplay:
    """Pumps the caller's messages into whichever upstream attempt is current.

    Until the call commits (the caller saw an answer) the messages sent so far
    are kept, up to `limit` bytes, so a retry can replay them; past the limit
    the call is no longer replayable. One task does all the writing, so a
    replayed message never overtakes a new one.

    grpc.aio's `write` marks a call INTERNAL when the upstream has already
    ended it (UNIMPLEMENTED at header time, an early error) and the
    upstream's real status can be lost; writing through the call's core
    object leaves the status to the upstream.
    """

    def __init__(self, source: AsyncIterator[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._ended = False
        self.replayable = True
        self._call: grpc.aio.StreamStreamCall | None = None
        self._switched = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def attach(self, call: grpc.aio.StreamStreamCall) -> None:
        """Feed `call` from now on, replaying what earlier attempts were sent."""
        self._call = call
        self._switched.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def commit(self) -> None:
        """No more retries: stop keeping messages."""
        self.replayable = False

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            self._switched.clear()
            call = self._call
            assert call is not None
            # Any failure here means this attempt ended: its status says why.
            with contextlib.suppress(Exception):
                await self._feed(call)
            await self._switched.wait()

    async def _feed(self, call: grpc.aio.StreamStreamCall) -> None:
        await call.wait_for_connection()
        send = call._cython_call.send_serialized_message
        kept = self._kept
        sent = 0
        while True:
            if sent < len(kept):
                await send(kept[sent])
                sent += 1
                if not self.replayable:
                    del kept[:sent]
                    sent = 0
            elif self._ended:
                await call.done_writing()
                return
            else:
                message = await anext(self._source, None)
                if message is None:
                    self._ended = True
                else:
                    kept.append(message)
                    self._kept_bytes += len(message)
                    if self._kept_bytes > self._limit:
                        self.replayable = False
