"""How many writers share one SQLite file without waiting on each other for nothing.

`WriteLock` queues writers across threads and processes on a lock file, so the
SQLite write lock is handed over the moment it is free (SQLite's own busy handler
sleeps and retries, which under load means latency spikes).  `GroupCommit` lets
the threads of one process share a transaction: one fsync commits a whole batch.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import T

if TYPE_CHECKING:
    from .sqlite import SqliteStore


class WriteLock:
    """Serialise writers to one database file, across threads and processes.

    SQLite's busy handler waits by sleeping and retrying, which under load turns
    into latency spikes of hundreds of milliseconds.  Queuing writers on a lock
    file with flock (and a thread lock inside the process) hands the write lock
    over as soon as it is released instead.  Waiting is bounded (`acquire`'s
    timeout): a frozen process holding the lock makes writers fail, not hang.
    """

    _locks: dict[str, WriteLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    @classmethod
    def for_database(cls, database: Path) -> WriteLock:
        """Return the process-wide lock for a database file."""
        key = str(database.absolute())
        with cls._guard:
            if key not in cls._locks:
                cls._locks[key] = cls(key + ".lock")
            return cls._locks[key]

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False when it could not be had."""
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=timeout):
            return False
        try:
            if self._pid != os.getpid():  # a forked child must not share its parent's lock
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            assert self._fd is not None
            pause = 0.0002
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() + pause > deadline:
                        self._thread_lock.release()
                        return False
                    time.sleep(pause)
                    pause = min(pause * 2, 0.002)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        """Let the next writer in."""
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


class _Pending:
    """One write waiting to ride in a shared transaction."""

    def __init__(self, work: Callable[[SqliteStore], Any]) -> None:
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Run short writes from many threads in shared transactions: one fsync a batch.

    Each caller queues its write and then waits for the leader lock; whoever holds
    it runs every queued write (each in its own savepoint, so one failing write
    does not undo the others) in a single transaction.  A caller finding its write
    already done returns at once.  Nothing returns before its write is committed.
    """

    _instances: dict[str, GroupCommit] = {}
    _guard = threading.Lock()

    def __init__(self) -> None:
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._leader = threading.Lock()

    @classmethod
    def for_database(cls, database: Path) -> GroupCommit:
        """Return the process-wide batcher for a database file."""
        key = str(database.absolute())
        with cls._guard:
            if key not in cls._instances:
                cls._instances[key] = cls()
            return cls._instances[key]

    def run(self, store: SqliteStore, work: Callable[[SqliteStore], T]) -> T:
        """Run ``work(store)`` inside a committed transaction and return its result."""
        mine = _Pending(work)
        with self._queue_lock:
            self._queue.append(mine)
        with self._leader:
            if not mine.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(store, batch)
        if mine.error is not None:
            raise mine.error
        result: T = mine.result
        return result

    @staticmethod
    def _commit(store: SqliteStore, batch: list[_Pending]) -> None:
        try:
            with store.transaction():
                if len(batch) == 1:  # alone: the transaction itself isolates the write
                    batch[0].result = batch[0].work(store)
                    return
                for pending in batch:
                    try:
                        with store.db.atomic():
                            pending.result = pending.work(store)
                    except Exception as error:
                        pending.error = error
        except BaseException as error:
            for pending in batch:
                pending.error = pending.error or error
            raise
        finally:
            for pending in batch:
                pending.done = True
