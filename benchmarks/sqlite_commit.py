"""How long a callback holds SQLite's write lock when its thread shares the GIL.

    python benchmarks/sqlite_commit.py [--callbacks 2000] [--siblings 3]

Every SQLite writer, in every process, queues on one write lock (`WriteLock`), so
the time one callback holds it bounds the receiver's rate whatever the cores.
This runs the service's own path for a callback (`events.receive` on a
`SqliteStore` with the service's schema, 100 000 jobs, ``synchronous=FULL``) in
one thread, and times each hold of the write lock, wall clock and that thread's
own CPU, in three settings, the first being the baseline:

- alone: no other thread in the process;
- request-like siblings: ``--siblings`` threads of the same process parse and dump
  JSON bodies for about 0.1 ms between two socket calls, as a gunicorn worker's
  other threads do under load;
- siblings that never block (the worst case), at CPython's 5 ms switch interval
  and at ``sys.setswitchinterval(0.0005)``.

The sqlite3 module lets go of the GIL for every statement and for COMMIT's
fsync, and has to win it back from the siblings before the next one: the lock is
held meanwhile.  An ``os.fsync`` of 48 KiB (about what a callback's COMMIT
writes to the WAL) on the same file system is printed for scale.  The settings run
one after another on the same database, the baseline first; a hold is timed from
just after the lock is taken to just after it is let go.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engines import command_line, load, percentile  # noqa: E402
from receiver import make_jobs  # noqa: E402

from webhook_service import events  # noqa: E402
from webhook_service.store.sqlite import SqliteStore  # noqa: E402
from webhook_service.store.writers import WriteLock  # noqa: E402

BURST = 7  # parse + dump of BODY takes ~14 us here: ~0.1 ms of Python between socket calls
BODY: dict[str, Any] = {
    "type": "video.generation.completed",
    "created_at": "2026-11-21T00:00:00.000Z",
    "data": {"status": "completed", "unsigned_urls": ["u"], "usage": {"cost": 0.1}},
}


class Holds:
    """Wall and thread-CPU time of each hold of the write lock, taken and released in one thread."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._acquire, self._release = WriteLock.acquire, WriteLock.release
        self._started = (0.0, 0.0)

    def __enter__(self) -> Holds:
        holds = self

        def acquire(lock: WriteLock, timeout: float) -> bool:
            taken = holds._acquire(lock, timeout)
            holds._started = (time.perf_counter(), time.thread_time())
            return taken

        def release(lock: WriteLock) -> None:
            holds._release(lock)
            wall, cpu = holds._started
            holds.wall.append(time.perf_counter() - wall)
            holds.cpu.append(time.thread_time() - cpu)

        WriteLock.acquire, WriteLock.release = acquire, release  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        WriteLock.acquire, WriteLock.release = self._acquire, self._release  # type: ignore[method-assign,assignment]


def busy(stop: threading.Event, blocks: bool) -> None:
    """Parse and dump JSON bodies; with ``blocks``, a socket round trip every ~0.1 ms."""
    text = json.dumps({**BODY, "data": {**BODY["data"], "id": "job-x", "seq": 1}})
    near, far = socket.socketpair()
    with near, far:
        while not stop.is_set():
            for _ in range(BURST):
                json.dumps(json.loads(text), sort_keys=True)
            if blocks:
                near.send(b"x")
                far.recv(1)


def run(store: SqliteStore, first: int, count: int) -> tuple[list[float], list[float]]:
    with Holds() as holds:
        for n in range(first, first + count):
            body = json.dumps({**BODY, "data": {**BODY["data"], "id": f"job-bench{n}"}}).encode()
            headers = {"X-OpenRouter-Idempotency-Key": f"commit-{n}"}
            events.receive(store, body, headers, f"tok{n}", int(time.time()), time.time())
    return holds.wall, holds.cpu


def fsync_ms(folder: Path, rounds: int = 200) -> float:
    path = folder / "fsync-probe"
    times = []
    with path.open("wb") as out:
        for _ in range(rounds):
            out.write(os.urandom(48 * 1024))
            out.flush()
            started = time.perf_counter()
            os.fsync(out.fileno())
            times.append(time.perf_counter() - started)
    path.unlink()
    return statistics.median(times) * 1000


def with_siblings(
    store: SqliteStore, first: int, count: int, siblings: int, blocks: bool, switch: float
) -> tuple[list[float], list[float]]:
    """`run` while ``siblings`` `busy` threads share the GIL at switch interval ``switch``."""
    default_switch = sys.getswitchinterval()
    stop = threading.Event()
    threads = [threading.Thread(target=busy, args=(stop, blocks)) for _ in range(siblings)]
    sys.setswitchinterval(switch)
    for thread in threads:
        thread.start()
    try:
        return run(store, first, count)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(default_switch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=2000, help="callbacks per setting")
    parser.add_argument("--siblings", type=int, default=3, help="busy threads beside the writer")
    args = parser.parse_args()
    count, siblings, switch = args.callbacks, args.siblings, sys.getswitchinterval()
    settings = (
        ("alone (baseline)", 0, True, switch),
        (f"{siblings} request-like siblings", siblings, True, switch),
        (f"{siblings} never-blocking siblings", siblings, False, switch),
        (f"{siblings} never-blocking, switch 0.5 ms", siblings, False, 0.0005),
    )
    with tempfile.TemporaryDirectory(prefix="sqlite-commit-") as folder:
        work = Path(folder)
        store = SqliteStore(work / "bench.sqlite3")
        store.migrate()
        make_jobs(store, 100_000)
        before = load()
        rows = [
            (name, *with_siblings(store, number * count, count, *setting))
            for number, (name, *setting) in enumerate(settings)
        ]
        store.close()
        fsync = fsync_ms(work)
    print(
        f"\nwrite-lock hold per callback (events.receive, SQLite, synchronous=FULL), "
        f"{count} callbacks per setting"
    )
    print(f"{before} before, {load()} after")
    print(f"fsync of 48 KiB on this file system: median {fsync:.3f} ms\n")
    print("setting | hold p50 / p90 ms | thread CPU p50 ms | hold vs alone (p50)")
    base = statistics.median(rows[0][1])
    for name, wall, cpu in rows:
        p50 = statistics.median(wall)
        print(
            f"{name} | {p50 * 1000:.3f} / {percentile(wall, 0.9) * 1000:.3f} | "
            f"{statistics.median(cpu) * 1000:.3f} | {p50 / base:.1f}x"
        )
    print(f"\nreproduce: {command_line()}")


if __name__ == "__main__":
    main()
