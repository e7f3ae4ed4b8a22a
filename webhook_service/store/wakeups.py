"""Wake idle SQLite workers the moment work becomes due, across processes.

PostgreSQL has LISTEN/NOTIFY; this is SQLite's equivalent, as simple: each waiting
worker binds a Unix datagram socket in a folder beside the database
(``<db>.wake/``), and a connection that committed due work sends one byte to every
socket there.  A socket left by a process that died is refused and removed.

A wake-up is only a latency optimisation: a lost datagram, a folder that cannot
be made or a path too long for a socket leave the waiter on its slower poll.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

MAX_SOCKET_PATH = 107 if sys.platform == "linux" else 103  # sun_path, less its NUL


def folder_for(database: Path) -> Path:
    """Where the waiters of one database file bind their sockets."""
    return database.absolute().with_name(database.name + ".wake")


def ring(folder: Path) -> None:
    """Wake every worker waiting on this folder's database; never raises."""
    try:
        names = os.listdir(folder)
    except OSError:
        return  # nobody has ever waited here
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            path = os.path.join(folder, name)
            try:
                sender.sendto(b"!", path)
            except BlockingIOError:
                pass  # its queue is full: it has been woken already
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its process is gone
            except OSError:
                pass


class Doorbell:
    """One waiter's socket: `wait` returns early when someone rings."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"{os.getpid()}-{threading.get_native_id()}"
        self._socket: socket.socket | None = None
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            return
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # left by an earlier process with our pid
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(os.fspath(self.path))
        except OSError:
            return  # the waiter falls back to its poll
        listener.setblocking(False)
        self._socket = listener

    @property
    def listening(self) -> bool:
        """Answer whether rings can reach this waiter."""
        return self._socket is not None

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when woken by a ring."""
        if self._socket is None:
            time.sleep(timeout)
            return False
        poller = select.poll()  # not select(): descriptors may be numbered past 1024
        poller.register(self._socket, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
        with contextlib.suppress(BlockingIOError):
            while self._socket.recv(64):  # one wake-up, however many rang
                pass
        return True

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)
