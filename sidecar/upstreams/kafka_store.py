"""A Kafka spool on disk: one SQLite database per target, run in a thread of its own.

SQLite (the stdlib module) in WAL mode with `synchronous=FULL`: a commit returns once
the write-ahead log is on stable storage, so a message answered "spooled" survives a
power cut (NORMAL in WAL would only survive a crash of the process). Writes from every
caller go through one queue: what arrives while a commit is running is applied in the
next transaction, so concurrent calls share one fsync (a commit per group of
messages). The event loop never waits on the disk; it awaits futures the thread settles.
A lock file (`flock`) keeps a second daemon out of the same directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from sidecar.errors import ConfigError

DB_NAME = "spool.db"
LOCK_NAME = "spool.lock"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB,
    headers BLOB,
    partition INTEGER NOT NULL,
    size INTEGER NOT NULL,
    spooled_at REAL NOT NULL,
    state INTEGER NOT NULL DEFAULT 1,
    out_partition INTEGER NOT NULL DEFAULT -1,
    out_offset INTEGER NOT NULL DEFAULT -1,
    error TEXT NOT NULL DEFAULT '',
    done_at REAL
);
CREATE INDEX IF NOT EXISTS messages_state ON messages (state, seq);
"""
_INSERT = ("INSERT INTO messages (seq, request_id, topic, key, value, headers, partition, "
           "size, spooled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
# A final state keeps what Status answers; the payload goes (its bytes are no longer held).
_FINISH = ("UPDATE messages SET state = ?, out_partition = ?, out_offset = ?, error = ?, "
           "done_at = ?, key = NULL, value = NULL, headers = NULL WHERE seq = ?")
_DELETE = "DELETE FROM messages WHERE seq = ?"
_WAITING = ("SELECT seq, topic, key, value, headers, partition FROM messages "
            "WHERE state = 1 AND seq >= ? ORDER BY seq LIMIT ?")
_LOAD = ("SELECT seq, request_id, topic, key, size, spooled_at, state, out_partition, "
         "out_offset, error, done_at FROM messages ORDER BY state = 1, done_at, seq")

Header = tuple[str, str | bytes | None]


class StoredMessage(NamedTuple):
    """A spooled message read back for delivery."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes
    headers: list[Header]
    partition: int


class Row(NamedTuple):
    """A row as loaded at start (no payload): rebuilds the ledger."""

    seq: int
    request_id: str
    topic: str
    key: bytes | None
    size: int
    spooled_at: float
    state: int
    partition: int
    offset: int
    error: str
    done_at: float | None


def encode_headers(headers: Iterable[Header]) -> bytes:
    return orjson.dumps([[n, v] if isinstance(v, str) or v is None else [n, None, v.hex()]
                         for n, v in headers])


def decode_headers(blob: bytes | None) -> list[Header]:
    if not blob:
        return []
    return [(h[0], h[1]) if len(h) == 2 else (h[0], bytes.fromhex(h[2]))
            for h in orjson.loads(blob)]


class SpoolStore:
    """The spool's SQLite database and the one thread that touches it."""

    def __init__(self, directory: str, key_path: str) -> None:
        self.directory = directory
        self._key_path = key_path  # `targets.<name>.spool.dir`, for errors at start
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sidecar-spool")
        self._db: sqlite3.Connection | None = None
        self._lock_fd = -1
        self._queue: list[tuple[str, Sequence[Any], asyncio.Future[None]]] = []
        self._committing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0

    async def open(self) -> list[Row]:
        """Open (or create) the database and read back what it holds; a directory that
        cannot hold it is a ConfigError naming the key path."""
        self._loop = asyncio.get_running_loop()
        try:
            rows: list[Row] = await self._run(self._open)
            return rows
        except (OSError, sqlite3.Error) as e:
            await self._run(self._close)
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError([f"{self._key_path}: cannot open the spool: {reason}"]) from None

    def _open(self) -> list[Row]:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(0, "in use by another process (its spool.lock is held)") from None
        self._lock_fd = fd
        db = self._db = sqlite3.connect(os.path.join(self.directory, DB_NAME),
                                        isolation_level=None, check_same_thread=False)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"WAL journal mode refused ({mode})")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return [Row(*r) for r in db.execute(_LOAD)]

    async def close(self) -> None:
        """Finish queued writes, then close the database (its file stays)."""
        while self._queue or self._committing:
            waiters = [f for _, _, f in self._queue]
            if not waiters:
                await asyncio.sleep(0.001)
                continue
            await asyncio.gather(*waiters, return_exceptions=True)
        with contextlib.suppress(RuntimeError):
            await self._run(self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def insert(self, rows: Sequence[tuple[Any, ...]]) -> asyncio.Future[None]:
        """Spool rows (seq, request_id, topic, key, value, headers, partition, size,
        spooled_at); the future settles once they are committed."""
        return self._write(_INSERT, rows)

    def finish(self, rows: Sequence[tuple[Any, ...]]) -> asyncio.Future[None]:
        """Final states (state, partition, offset, error, done_at, seq)."""
        return self._write(_FINISH, rows)

    def delete(self, seqs: Sequence[int]) -> asyncio.Future[None]:
        return self._write(_DELETE, [(s,) for s in seqs])

    async def waiting(self, from_seq: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` waiting messages from `from_seq` on, oldest first."""
        rows = await self._run(self._select, from_seq, limit)
        return [StoredMessage(seq, topic, key, value, decode_headers(headers), partition)
                for seq, topic, key, value, headers, partition in rows]

    def _select(self, from_seq: int, limit: int) -> list[tuple[Any, ...]]:
        assert self._db is not None
        return self._db.execute(_WAITING, (from_seq, limit)).fetchall()

    def _write(self, sql: str, rows: Sequence[Any]) -> asyncio.Future[None]:
        loop = self._loop
        assert loop is not None
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((sql, rows, done))
        if not self._committing:
            self._committing = True
            loop.call_soon(self._commit)  # what the rest of this loop turn adds joins in
        return done

    def _commit(self) -> None:
        group, self._queue = self._queue, []
        work = self._thread.submit(self._apply, [(sql, rows) for sql, rows, _ in group])
        asyncio.wrap_future(work).add_done_callback(partial_settle(group, self._committed))

    def _committed(self) -> None:
        self.commits += 1
        if self._queue:
            self._commit()
        else:
            self._committing = False

    def _apply(self, group: list[tuple[str, Sequence[Any]]]) -> None:
        db = self._db
        if db is None:
            raise sqlite3.ProgrammingError("the spool is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in group:
                db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = self._loop
        assert loop is not None
        return await loop.run_in_executor(self._thread, fn, *args)


def partial_settle(
    group: list[tuple[str, Sequence[Any], asyncio.Future[None]]], then: Callable[[], None]
) -> Callable[[asyncio.Future[None]], None]:
    """The callback that settles a commit group's futures with the commit's outcome."""

    def settle(work: asyncio.Future[None]) -> None:
        error = work.exception()
        for _, _, done in group:
            if done.done():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        then()

    return settle
