"""Delivery reports served the moment librdkafka has them, not on the poller's next tick.

librdkafka can write a byte to a file descriptor whenever its main queue (delivery
reports, stats, errors and logs: what `poll()` serves) goes from empty to non-empty
(`rd_kafka_queue_io_event_enable`). The event loop watches the read end of a pipe given
to it and calls `poll(0)` when it is readable. A 1 ms timer left a call waiting for its
acknowledgement 1-2 ms longer than librdkafka took (uvloop's timers have a millisecond's
grain); a thread blocking in `poll()` would take the GIL once per report, waiting out the
interpreter's switch interval each time the loop is busy.

confluent-kafka does not expose that call, so it is made through ctypes on the librdkafka
this process loaded (found in /proc/self/maps), with the client handle read from the
Producer object: confluent-kafka's `Handle` struct keeps `rd_kafka_t *rk` right after
the object header. That layout is not a public interface: the handle is used only after
librdkafka confirms it (a producer whose name starts with the `client.id` we gave it),
tests/test_kafka_wakeup.py checks it against the pinned confluent-kafka, and where any of
it does not hold the upstream keeps its timer (`wakeup_for` answers None).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Any

log = logging.getLogger("sidecar.kafka")

_PRODUCER = 0  # rd_kafka_type_t RD_KAFKA_PRODUCER
_HANDLE_OFFSET = object.__basicsize__  # rk follows PyObject_HEAD
_PAYLOAD = b"!"


@functools.cache
def _librdkafka() -> Any:
    """The librdkafka confluent-kafka loaded (none outside Linux: no /proc/self/maps),
    with the prototypes used here, or None."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "librdkafka" in line
                         and line.rstrip().endswith((".so.1", ".so.2"))), None)
        if path is None:
            return None
        lib = ctypes.CDLL(path)
        for name, args, result in (
            ("rd_kafka_type", [ctypes.c_void_p], ctypes.c_int),
            ("rd_kafka_name", [ctypes.c_void_p], ctypes.c_char_p),
            ("rd_kafka_queue_get_main", [ctypes.c_void_p], ctypes.c_void_p),
            ("rd_kafka_queue_io_event_enable",
             [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t], None),
            ("rd_kafka_queue_destroy", [ctypes.c_void_p], None),
        ):
            function = getattr(lib, name)
            function.argtypes, function.restype = args, result
    except (OSError, AttributeError):
        return None
    return lib


class Wakeup:
    """The pipe one producer's main queue signals; `fd` is the end the loop watches.
    `close()` (before the producer is let go) stops librdkafka writing to it first."""

    __slots__ = ("_lib", "_payload", "_producer", "_queue", "_write", "fd")

    def __init__(self, lib: Any, producer: Any, handle: int) -> None:
        self._lib = lib
        self._producer = producer  # alive while librdkafka holds our queue reference
        self.fd, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._payload = ctypes.create_string_buffer(_PAYLOAD, len(_PAYLOAD))
        self._queue = lib.rd_kafka_queue_get_main(handle)
        lib.rd_kafka_queue_io_event_enable(self._queue, self._write, self._payload,
                                           len(_PAYLOAD))

    def drain(self) -> None:
        """Read what librdkafka wrote (a byte per empty -> non-empty change)."""
        try:
            while len(os.read(self.fd, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._queue is None:
            return
        self._lib.rd_kafka_queue_io_event_enable(self._queue, -1, None, 0)
        self._lib.rd_kafka_queue_destroy(self._queue)
        self._queue = None
        os.close(self.fd)
        os.close(self._write)
        self._producer = None


def wakeup_for(producer: Any, client_id: str) -> Wakeup | None:
    """A Wakeup for a confluent_kafka.Producer made with `client_id`, or None where this
    process cannot have one (no librdkafka found, another layout, a stand-in object)."""
    from confluent_kafka import Producer

    lib = _librdkafka()
    if lib is None or type(producer) is not Producer:
        return None
    handle = ctypes.c_void_p.from_address(id(producer) + _HANDLE_OFFSET).value
    if not handle:
        return None
    name = lib.rd_kafka_name(handle) or b""
    if lib.rd_kafka_type(handle) != _PRODUCER or not name.startswith(
            f"{client_id}#producer-".encode()):
        log.warning("kafka delivery reports on a timer: confluent-kafka's client handle "
                    "is not where this daemon reads it", extra={"fields": {
                        "client_id": client_id}})
        return None
    return Wakeup(lib, producer, handle)
