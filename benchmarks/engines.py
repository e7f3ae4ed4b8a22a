"""What the benchmarks share: a PostgreSQL server, raw reads for checks, the machine's load.

``postgres_server()`` uses ``TEST_DATABASE_URL`` (a role that may create databases)
when set, else starts a private throwaway cluster on a free loopback port as the
tests do (``tests/pg.py``); either way it yields a function that creates a fresh,
empty database and returns its URL.  Checks read rows with plain SQL on either
engine: a benchmark checks the database, it does not go through the code it measures.
"""

from __future__ import annotations

import collections
import math
import os
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
