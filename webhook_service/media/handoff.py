"""Work handed to a thread of its own, run in order, with a bounded backlog.

A download receives, hashes and stores its bytes.  hashlib lets go of the GIL while
it hashes a buffer over 2 KiB, and so do a file's writes and a socket's sends, so a
second thread doing part of that work runs on a second core while the first one
receives the next chunk.  `Handoff` is that thread: ``submit`` queues a callable and
returns at once (or waits while ``backlog`` callables already wait, which bounds the
memory they hold), ``wait`` returns once every one has run, ``cancel`` drops those
not started.

An error in a callable is kept and raised to the caller by the next ``submit`` or
``wait``; the callables queued after it are dropped, so nothing runs on top of a
failure.  The thread starts with the first callable and ends after a second without
work, so an object dropped without ``wait`` or ``cancel`` leaves nothing running.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

IDLE_SECONDS = 1.0


class Handoff:
    """Runs the callables handed to it one after another, on one thread of its own."""

    def __init__(self, name: str, backlog: int = 1) -> None:
        self.name = name
        self.backlog = backlog
        self._tasks: deque[Callable[[], object]] = deque()
        self._changed = threading.Condition(threading.Lock())
        self._running = False  # a thread is there to take the tasks
        self._busy = False  # it is running one now
        self._error: BaseException | None = None

    def submit(self, task: Callable[[], object]) -> None:
        """Queue ``task``; wait while ``backlog`` tasks wait; raise an earlier task's error."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._tasks) < self.backlog or self._error)
            self._raise()
            if not self._running:
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
                self._running = True
            self._tasks.append(task)
            self._changed.notify_all()

    def wait(self) -> None:
        """Return once every task handed over has run; raise the first error, if any."""
        with self._changed:
            self._changed.wait_for(lambda: not (self._tasks or self._busy))
            self._raise()

    def cancel(self) -> None:
        """Drop the tasks not started, wait for the one running, and forget any error."""
        with self._changed:
            self._tasks.clear()
            self._changed.wait_for(lambda: not self._busy)
            self._error = None

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._changed:
                self._busy = False
                self._changed.notify_all()
                if not self._changed.wait_for(lambda: self._tasks, IDLE_SECONDS):
                    self._running = False
                    return
                task = self._tasks.popleft()
                self._busy = True
                self._changed.notify_all()  # room in the backlog
            try:
                task()
            except BaseException as error:  # handed to the caller by submit or wait
                with self._changed:
                    self._error = self._error or error
                    self._tasks.clear()
