"""Where the receiver's CPU goes: CPU time per request, the service against bare Flask.

    python benchmarks/receiver_cpu.py [--duration 6] [--repeats 3]

The receiver benchmark gives req/s ratios; this one says why they are what they
are on this machine.  Both servers run the Procfile's web line on loopback
(SQLite, as in ``receiver.py``); wrk sends the same signed callbacks at 16 and 64
connections while the CPU time of each gunicorn process tree (master, workers,
all threads) is read from ``/proc`` before and after.  Reported per run: req/s,
cores used, and CPU milliseconds per request; the median over ``--repeats``.

If the service needs ``c`` ms of CPU per request where bare Flask needs ``b``, no
scheduling can give it more than ``b / c`` of bare Flask's rate on the same cores;
cores it leaves idle (waiting on the database's single writer) lower it further.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from engines import command_line, load  # noqa: E402
from receiver import (  # noqa: E402
    SECRET,
    THREADS,
    WORKERS,
    ensure_wrk,
    free_port,
    open_database,
    run_wrk,
    start_gunicorn,
    write_script,
)

TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children, all threads."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    total = 0
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a worker restarted between the two reads
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per connection count")
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="receiver-cpu-"))
    try:
        db_env, _ = open_database("sqlite", work, None)
        env = {
            **db_env,
            "MEDIA_DIR": str(work / "videos"),
            "MODELGATES_WEBHOOK_SECRETS": SECRET,
            "TRUSTED_PROXY_COUNT": "0",
            "LOG_LEVEL": "WARNING",
        }
        before = load()
        servers = {}
        for name, target, cwd in (
            ("bare", "bare_app:app", ROOT / "benchmarks"),
            ("ours", "webhook_service.wsgi:app", work),
        ):
            port = free_port()
            servers[name] = (start_gunicorn(target, port, env, cwd), port)
        runs: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
        try:
            batch = 0
            for _ in range(args.repeats):
                for connections in (16, 64):
                    script = work / f"events{batch}.lua"
                    write_script(script, 60_000, offset=batch * 60_000)
                    batch += 1
                    for name, (process, port) in servers.items():
                        cpu, wall = tree_cpu_seconds(process.pid), time.monotonic()
                        result = run_wrk(
                            wrk, f"http://127.0.0.1:{port}", script, connections, args.duration
                        )
                        cpu, wall = tree_cpu_seconds(process.pid) - cpu, time.monotonic() - wall
                        requests = result["rps"] * args.duration
                        runs.setdefault((connections, name), []).append(
                            (result["rps"], cpu / wall, cpu / requests * 1000)
                        )
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(15)
        print(
            f"\nreceiver CPU, engine sqlite: the Procfile web line ({WORKERS} workers x "
            f"{THREADS} threads), {args.duration}s per run, median of {args.repeats} runs"
        )
        print(f"{before} before, {load()} after\n")
        print("conns | server | req/s | cores used | CPU ms per request")
        for (connections, name), values in sorted(runs.items()):
            rps, cores, per_request = (statistics.median(v) for v in zip(*values, strict=True))
            print(f"{connections:>5} | {name:>6} | {rps:6.0f} | {cores:10.2f} | {per_request:.3f}")
        for connections in (16, 64):
            bare = statistics.median(v[2] for v in runs[(connections, "bare")])
            ours = statistics.median(v[2] for v in runs[(connections, "ours")])
            print(
                f"{connections} connections: CPU-bound ceiling for the ratio = bare / ours "
                f"CPU per request = {bare / ours:.2f}"
            )
        print(f"\nreproduce: {command_line()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
