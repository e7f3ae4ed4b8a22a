"""What the benchmarks share: a PostgreSQL server, raw reads for checks, the machine's load.

``postgres_server()`` uses ``TEST_DATABASE_URL`` (a role that may create databases)
when set, else starts a private throwaway cluster on a free loopback port as the
tests do (``tests/pg.py``); either way it yields a function that creates a fresh,
empty database and returns its URL.  Checks read rows with plain SQL on either
engine: a benchmark checks the database, it does not go through the code it measures.

``delayed(url, one_way_ms)`` puts the database "elsewhere": a loopback TCP proxy that
holds every chunk ``one_way_ms`` in each direction, in order, as a managed database on
another host would (0.3-1 ms round trip), so round trips cost what they cost there.
"""

from __future__ import annotations

import array
import collections
import math
import os
import queue
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


@contextmanager
def postgres_server() -> Iterator[Callable[[str], str]]:
    """Yield ``create(name) -> url`` on a PostgreSQL server; stop a private one at the end."""
    import psycopg
    from pg import PrivateCluster, find_binaries, with_database

    cluster = None
    admin = os.environ.get("TEST_DATABASE_URL", "").strip()
    if not admin:
        binaries = find_binaries()
        if binaries is None:
            sys.exit("PostgreSQL is not installed (no initdb) and TEST_DATABASE_URL is not set")
        cluster = PrivateCluster(binaries)
        cluster.start()
        admin = cluster.url
    created: list[str] = []

    def create(name: str) -> str:
        name = f"bench_{os.getpid()}_{name}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        created.append(name)
        return with_database(admin, name)

    try:
        yield create
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            with psycopg.connect(admin, autocommit=True) as conn:
                for name in created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


class DelayProxy:
    """A TCP proxy on 127.0.0.1 to ``host:port`` that holds each chunk ``delay`` seconds each way.

    Per connection and direction, one thread reads and stamps each chunk with the
    time it may leave, another sends the chunks in order once that time has come: a
    chunk read while an earlier one waits is not held any longer for it, so the link
    adds latency, not a bandwidth limit.  Threads, not asyncio: ``time.sleep`` waits
    to the tens of microseconds, an asyncio timer to the next whole millisecond.
    """

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.upstream = (host, port)
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.held = array.array("d")  # how long each chunk was held, in seconds
        self._sockets: set[socket.socket] = set()
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, name="delay-proxy", daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every open connection."""
        with self._guard:
            live, self._sockets = list(self._sockets), set()
        for sock in [self._listener, *live]:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept or recv
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                # Nagle would hold a small write until the previous one is acknowledged.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._guard:
                self._sockets |= {client, server}
            pair = (client, server)
            ended = [0]  # directions finished; the second one closes both sockets
            for source, target in (pair, pair[::-1]):
                chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
                threading.Thread(target=self._read, args=(source, chunks), daemon=True).start()
                threading.Thread(
                    target=self._send, args=(chunks, target, pair, ended), daemon=True
                ).start()

    def _read(self, source: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _send(
        self,
        chunks: queue.SimpleQueue[tuple[float, bytes]],
        target: socket.socket,
        pair: tuple[socket.socket, socket.socket],
        ended: list[int],
    ) -> None:
        while True:
            due, data = chunks.get()
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
                now = time.monotonic()
            self.held.append(now - due + self.delay)  # sleeps end late: report how late
            try:
                if not data:
                    target.shutdown(socket.SHUT_WR)  # the end of stream, delayed like the rest
                    break
                target.sendall(data)
            except OSError:
                for sock in pair:  # the far end is gone: wake the other direction's reader
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                break
        with self._guard:
            ended[0] += 1
            if ended[0] < 2:
                return
            self._sockets.difference_update(pair)
        for sock in pair:
            sock.close()

    def url(self, url: str) -> str:
        """``url`` (whose host and port this proxy forwards to) pointing at the proxy."""
        parts = urlsplit(url)
        user, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{self.port}"))

    def summary(self) -> str:
        """How long the chunks forwarded so far were held: mean, median, p99 and max."""
        if not self.held:
            return "no chunk"
        held = sorted(self.held)
        return (
            f"{len(held)} chunks: {1000 * statistics.fmean(held):.3f} ms mean, "
            f"{1000 * statistics.median(held):.3f} ms median, "
            f"{1000 * percentile(held, 0.99):.3f} ms p99, {1000 * held[-1]:.1f} ms max"
        )


@contextmanager
def delayed(url: str, one_way_ms: float) -> Iterator[DelayProxy]:
    """Yield a `DelayProxy` to ``url``'s server adding ``one_way_ms`` each way."""
    parts = urlsplit(url)
    if not parts.hostname:
        sys.exit("a delayed database needs a TCP address in its URL (host and port)")
    proxy = DelayProxy(parts.hostname, parts.port or 5432, one_way_ms / 1000)
    try:
        yield proxy
    finally:
        proxy.close()


def round_trip_ms(url: str, count: int = 200) -> float:
    """The median time of ``SELECT 1`` on one open connection, in milliseconds."""
    import psycopg

    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(count):
            start = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def query(database: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a PostgreSQL URL or an SQLite file path (``?`` placeholders)."""
    if database.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(database) as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())  # type: ignore[arg-type]
    conn = sqlite3.connect(database)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def load() -> str:
    """The load averages (1, 5, 15 min) and the core count, for the report."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """``median (min–max)`` of several runs."""
    if len(values) == 1:
        return fmt.format(values[0])
    low, high = min(values), max(values)
    return f"{fmt.format(statistics.median(values))} ({fmt.format(low)}–{fmt.format(high)})"


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` percentile (0–1) by nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


def command_line() -> str:
    """The command that reproduces this run, from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling ``pid`` and its children, idle threads included."""
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--idle",
            "--rate",
            "200",
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


IDLE_FRAMES = (
    "futures/thread.py:_worker",  # a pool thread waiting for work
    "threading.py:Condition.wait",
    "sqlite.py:SqliteStore.wait_for_change",  # the worker's idle wait (its time.sleep)
    "selectors.py:EpollSelector.select",  # gunicorn's and psycopg's idle waits
    "selectors.py:PollSelector.select",
    "socket.py:socket.accept",
    "queue.py:Queue.get",
)

# Frames on nearly every stack (thread start-up, the CLI), left out of the ``total`` list.
GENERIC_FRAMES = ("threading.py:", "futures/thread.py:", "click/", "cli.py:", "<frozen")


def summarise_profile(raw: Path, top: int = 12) -> str:
    """Where a py-spy raw (collapsed, ``--idle``) profile's busy samples fall.

    Stacks whose innermost frame is an idle wait (``IDLE_FRAMES``), or that are in the
    worker's wait for a commit (LISTEN on PostgreSQL), are counted apart;
    of the rest, ``self`` counts the innermost frame and ``total`` a function once per
    stack.  Waiting on a lock or a database answer counts as busy: it is time a
    request or a job spends.
    """
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        names = [_frame_name(frame) for frame in stack.split(";")[2:]] or ["(no python frame)"]
        samples += count
        if names[-1].endswith(IDLE_FRAMES) or any(n.endswith(".wait_for_change") for n in names):
            idle += count
            continue
        own[names[-1]] += count
        for name in set(names):
            if not name.startswith(GENERIC_FRAMES):
                total[name] += count
    busy = samples - idle
    if not busy:
        return "  (no busy samples)"
    lines = [
        f"  {samples} samples, {idle} of them idle waits; of the {busy} busy samples,"
        " self (innermost frame):"
    ]
    lines += [f"    {100 * n / busy:5.1f} %  {name}" for name, n in own.most_common(top)]
    lines.append("  total (anywhere on the stack):")
    lines += [f"    {100 * n / busy:5.1f} %  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """``function (path/to/module.py:12)`` -> ``module.py:function``."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{short}:{name.strip()}"
