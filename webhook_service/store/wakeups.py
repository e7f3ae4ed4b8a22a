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
import secrets
import select
import socket
import stat
import sys
import time
from pathlib import Path

MAX_SOCKET_PATH = 107 if sys.platform == "linux" else 103  # sun_path, less its NUL


def folder_for(database: Path) -> Path:
    """Where the waiters of one database file bind their sockets (symlinks resolved)."""
    real = database.resolve()
    return real.with_name(real.name + ".wake")


def ring(folder: Path) -> None:
    """Wake every worker waiting on this folder's database; never raises."""
    try:
        names = os.listdir(folder)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError:
        return  # nobody has ever waited here, or no descriptor to spare
    with sender:
        sender.setblocking(False)
        for name in names:
            path = os.path.join(folder, name)
            try:
                sender.sendto(b"!", path)
            except BlockingIOError:
                pass  # its queue is full: it has been woken already
            except ConnectionRefusedError:
                _remove_socket(path)  # its process is gone
            except OSError:
                pass


def _remove_socket(path: str, inode: int | None = None) -> None:
    """Remove a socket file (only that one, when ``inode`` is given); never anything else."""
    with contextlib.suppress(OSError):
        found = os.lstat(path)
        if stat.S_ISSOCK(found.st_mode) and inode in (None, found.st_ino):
            os.unlink(path)


class Doorbell:
    """One waiter's socket: `wait` returns early when someone rings."""

    def __init__(self, folder: Path) -> None:
        # Random, not the pid alone: containers sharing the folder may all be pid 1.
        self.path = folder / f"{os.getpid()}-{secrets.token_hex(6)}"
        self._socket: socket.socket | None = None
        self._inode: int | None = None
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            return
        try:
            folder.mkdir(exist_ok=True)  # permissions as the umask gives, like the database
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError:
            return  # the waiter falls back to its poll
        try:
            listener.bind(os.fspath(self.path))
            self._inode = os.lstat(self.path).st_ino
        except OSError:
            listener.close()
            return
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
            _remove_socket(os.fspath(self.path), self._inode)
