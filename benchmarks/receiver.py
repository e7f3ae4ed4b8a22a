"""Benchmark the callback receiver against a bare Flask endpoint, same gunicorn line.

    python benchmarks/receiver.py [--engine sqlite|postgres] [--duration 10] [--repeats 3]
        [--db-delay-ms 0.5]

Both servers run the Procfile's ``web`` line on loopback (``--config
python:webhook_service.gunicorn_conf``: its buffering worker, 2 workers x 4 threads,
access log on); the baseline is a bare Flask app answering 204.  wrk (Debian
package ``wrk``; installed if missing and we are root) sends signed callbacks for
100 000 known jobs, 10 % of them duplicates, at 16 and 64 connections (or
``--connections``), alternating baseline and service, ``--repeats`` times; the
table shows the median and the range.  Then 16 threads send more events, noting
each one answered 204: every one of those must be in the database.  Exits non-zero
if one is missing.

``--engine postgres`` uses ``TEST_DATABASE_URL`` when set, else a private cluster
(Debian's ``postgresql`` package) on a free loopback port.  ``--db-delay-ms 0.5``
puts that database "elsewhere": the service reaches it through a loopback proxy
holding every chunk 0.5 ms each way (a 1 ms round trip, as to a managed database
on another host; 0 measures the proxy alone).  The benchmark's own set-up and
checks connect directly.  The report names the ``webhook_service`` package the
service imports (``PYTHONPATH`` before the installed one measures another tree).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines import (  # noqa: E402
    DelayProxy,
    command_line,
    delayed,
    load,
    postgres_server,
    query,
    round_trip_ms,
    spread,
    start_profile,
    summarise_profile,
)

from webhook_service.signatures import sign  # noqa: E402
from webhook_service.store import Store  # noqa: E402

SECRET = "bench-secret"
WORKERS, THREADS = "2", "4"
THREADS_WRK = 2
VERIFY_THREADS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit("wrk is not installed: apt-get install wrk")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk") or sys.exit("wrk install failed")


def gunicorn_line(target: str, port: int) -> list[str]:
    """The Procfile's web line serving ``target`` on loopback."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        target,
        "--config",
        "python:webhook_service.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        WORKERS,
        "--threads",
        THREADS,
        "--graceful-timeout",
        "8",
        "--access-logfile",
        "-",
    ]


def start_gunicorn(target: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        gunicorn_line(target, port),
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,  # the access log, written as on the platform
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    sys.exit(f"gunicorn {target} did not start")


def imported_package(env: dict[str, str], cwd: Path) -> str:
    """Where ``webhook_service`` comes from for a child with this interpreter, env and cwd."""
    return subprocess.run(
        [sys.executable, "-c", "import webhook_service; print(webhook_service.__file__)"],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def make_jobs(store: Store, count: int) -> None:
    now = time.time()
    with store.transaction():
        for n in range(count):
            store.insert_job(
                {
                    "id": f"vj_bench{n}",
                    "upstream_id": f"job-bench{n}",
                    "callback_token": f"tok{n}",
                    "client": "bench",
                    "request_hash": "x",
                    "status": "pending",
                    "model": "google/veo-3.1",
                    "prompt": "bench",
                    "params": {},
                    "created_at": now,
                    "updated_at": now,
                    "submit_outcome": "accepted",
                    "next_poll_at": now + 3600,
                }
            )


LUA = """
local reqs = {}
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  for line in io.lines("%(data)s") do
    local url, sig, key, body = line:match("^(.-)\t(.-)\t(.-)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", url, {["Content-Type"] = "application/json",
      ["X-OpenRouter-Signature"] = sig, ["X-OpenRouter-Idempotency-Key"] = key}, body)
  end
  id = wrk.thread:get("id")
  counter = 0
end
function request()
  -- Threads interleave, so the two never send the same event by accident.
  local i = (counter * %(threads)d + id) %% #reqs + 1
  counter = counter + 1
  return reqs[i]
end
"""


def write_script(path: Path, count: int, offset: int) -> None:
    """Write a wrk script and its data: ``count`` signed requests, 10 % of them repeats."""
    now = int(time.time())
    lines = []
    for n in range(count):
        unique = offset + (n - 5 if n % 10 == 9 else n)  # every tenth repeats an earlier one
        job = unique % 100_000
        body = json.dumps(
            {
                "type": "video.generation.completed",
                "created_at": "2026-11-21T00:00:00.000Z",
                "data": {
                    "id": f"job-bench{job}",
                    "status": "completed",
                    "unsigned_urls": ["u"],
                    "usage": {"cost": 0.1},
                    "seq": unique,
                },
            },
            separators=(",", ":"),
        )
        key = f"bench-{unique}"
        signature = sign(SECRET, now, body.encode())
        lines.append(f"/webhooks/modelgates/tok{job}\t{signature}\t{key}\t{body}")
    data = path.with_suffix(".tsv")
    data.write_text("\n".join(lines) + "\n")
    path.write_text(LUA % {"data": data, "threads": THREADS_WRK})


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration: int) -> dict:
    out = subprocess.run(
        [
            wrk,
            f"-t{THREADS_WRK}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def percentile(name: str) -> float:
        value, unit = re.search(rf"\s{name}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": percentile("50"),
        "p99": percentile("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def verify_acknowledged(url: str, database: str, seconds: int) -> tuple[int, int]:
    """Send signed events from several threads, remembering each one answered 204.

    wrk cannot say which request an answer belongs to, so this exact check runs
    on its own against the same server: every acknowledged key must be stored.
    """
    acknowledged: set[str] = set()
    guard = threading.Lock()
    stop = time.time() + seconds

    def sender(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while time.time() < stop:
                unique = n - 5 if n % 10 == 9 else n  # every tenth repeats an earlier one
                key = f"verify-{worker}-{unique}"
                job = (worker * 7919 + unique) % 100_000
                body = json.dumps(
                    {
                        "type": "video.generation.completed",
                        "data": {
                            "id": f"job-bench{job}",
                            "status": "completed",
                            "unsigned_urls": ["u"],
                            "seq": key,
                        },
                    }
                ).encode()
                headers = {
                    "Content-Type": "application/json",
                    "X-OpenRouter-Signature": sign(SECRET, int(time.time()), body),
                    "X-OpenRouter-Idempotency-Key": key,
                }
                response = client.post(
                    f"{url}/webhooks/modelgates/tok{job}", content=body, headers=headers
                )
                if response.status_code == 204:
                    with guard:
                        acknowledged.add(key)
                n += 1

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(VERIFY_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = {
        row[0]
        for row in query(
            database,
            "SELECT idempotency_key FROM events WHERE idempotency_key LIKE ?",
            ["verify-%"],
        )
    }
    return len(acknowledged), len(acknowledged - stored)


def open_database(engine: str, work: Path, create_pg: object) -> tuple[dict[str, str], str]:
    """Create and migrate the database, add the benchmark's jobs; return its env and address."""
    if engine == "postgres":
        from webhook_service.store.postgres import PostgresStore

        url = create_pg("receiver")  # type: ignore[operator]
        store: Store = PostgresStore(url)
        env = {"DATABASE_URL": url}
        address = url
    else:
        from webhook_service.store.sqlite import SqliteStore

        db_path = work / "bench.sqlite3"
        store = SqliteStore(db_path)
        env = {"DATABASE_PATH": str(db_path)}
        address = str(db_path)
    store.migrate()
    make_jobs(store, 100_000)
    store.close()
    return env, address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per connection count")
    parser.add_argument("--events", type=int, default=60_000, help="signed requests per run")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the service's gunicorn processes with py-spy during the first run",
    )
    parser.add_argument(
        "--db-delay-ms",
        type=float,
        metavar="MS",
        help="with --engine postgres: the service reaches the database through a loopback "
        "proxy that holds each chunk MS milliseconds each way (0: the proxy, no delay)",
    )
    parser.add_argument(
        "--connections",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[16, 64],
        metavar="N,N",
        help=f"wrk connection counts, each at least {THREADS_WRK} (default 16,64)",
    )
    args = parser.parse_args()
    if min(args.connections) < THREADS_WRK:
        parser.error(f"--connections: wrk needs at least {THREADS_WRK} connections")
    if args.db_delay_ms is not None and (args.engine != "postgres" or args.db_delay_ms < 0):
        parser.error("--db-delay-ms needs --engine postgres and a delay of 0 or more")
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="receiver-bench-"))
    with postgres_server() if args.engine == "postgres" else nullcontext() as create_pg:
        try:
            run(args, wrk, work, create_pg)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, wrk: str, work: Path, create_pg: object) -> None:
    db_env, database = open_database(args.engine, work, create_pg)
    with ExitStack() as stack:
        proxy = None
        if args.db_delay_ms is not None:
            proxy = stack.enter_context(delayed(database, args.db_delay_ms))
            db_env["DATABASE_URL"] = proxy.url(database)
        measure(args, wrk, work, db_env, database, proxy)


def measure(
    args: argparse.Namespace,
    wrk: str,
    work: Path,
    db_env: dict[str, str],
    database: str,
    proxy: DelayProxy | None,
) -> None:
    env = {
        **db_env,
        "MEDIA_DIR": str(work / "videos"),
        "MODELGATES_WEBHOOK_SECRETS": SECRET,
        "TRUSTED_PROXY_COUNT": "0",
        "LOG_LEVEL": "WARNING",
    }
    package = imported_package(env, work)
    link = ""
    if proxy is not None:
        link = (
            f"database through a proxy adding {args.db_delay_ms} ms each way; SELECT 1 round "
            f"trip at rest {round_trip_ms(database):.3f} ms direct, "
            f"{round_trip_ms(db_env['DATABASE_URL']):.3f} ms through the proxy"
        )
        del proxy.held[:]  # the summary below is of the service's own traffic
    load_before = load()
    ours_port, bare_port = free_port(), free_port()
    ours = start_gunicorn("webhook_service.wsgi:app", ours_port, env, work)
    bare = start_gunicorn("bare_app:app", bare_port, env, ROOT / "benchmarks")
    results: dict[int, dict[str, list[dict]]] = {
        connections: {"bare": [], "ours": []} for connections in args.connections
    }
    profile: Path | None = None
    try:
        batch = 0
        for _ in range(args.repeats):
            for connections in args.connections:
                script = work / f"events{batch}.lua"
                write_script(script, args.events, offset=batch * args.events)
                batch += 1
                for name, port in (("bare", bare_port), ("ours", ours_port)):
                    spy = None
                    if args.profile and name == "ours" and profile is None:
                        profile = work / "profile.txt"
                        spy = start_profile(ours.pid, args.duration - 1, profile)
                    results[connections][name].append(
                        run_wrk(wrk, f"http://127.0.0.1:{port}", script, connections, args.duration)
                    )
                    if spy is not None:
                        spy.wait(60)
        acked, missing = verify_acknowledged(
            f"http://127.0.0.1:{ours_port}", database, args.duration
        )
    finally:
        for process in (ours, bare):
            process.terminate()
            process.wait(15)
    load_after = load()
    print(
        f"\nreceiver benchmark, engine {args.engine}: the Procfile web line (buffering worker, "
        f"{WORKERS} workers x {THREADS} threads), wrk {THREADS_WRK} threads, {args.duration}s per "
        f"run, 10% duplicate deliveries; median (min-max) of {args.repeats} runs"
    )
    print(f"{load_before} before, {load_after} after")
    print(f"service code: {package}")
    if proxy is not None:
        print(f"{link}\nduring the runs the proxy held {proxy.summary()}")
    print()
    print(
        "conns | bare req/s | ours req/s | ratio | bare p50 / p99 ms | ours p50 / p99 ms "
        "| p99 ratio | non-2xx"
    )
    failed = False
    for connections, by_name in results.items():
        bare_runs, ours_runs = by_name["bare"], by_name["ours"]
        ratio = [o["rps"] / b["rps"] for b, o in zip(bare_runs, ours_runs, strict=True)]
        p99_ratio = [o["p99"] / b["p99"] for b, o in zip(bare_runs, ours_runs, strict=True)]
        errors = sum(o["non_2xx"] for o in ours_runs)
        failed = failed or bool(errors)
        print(
            f"{connections:>5} | {spread([r['rps'] for r in bare_runs])} | "
            f"{spread([r['rps'] for r in ours_runs])} | {spread(ratio, '{:.2f}')} | "
            f"{statistics.median(r['p50'] for r in bare_runs):.1f} / "
            f"{spread([r['p99'] for r in bare_runs], '{:.1f}')} | "
            f"{statistics.median(r['p50'] for r in ours_runs):.1f} / "
            f"{spread([r['p99'] for r in ours_runs], '{:.1f}')} | "
            f"{spread(p99_ratio, '{:.2f}')} | {errors}"
        )
    print(
        f"\nacknowledgement check ({VERIFY_THREADS} concurrent senders, {args.duration}s): "
        f"{acked} unique events answered 204, {missing} of them missing from the database"
    )
    if profile is not None:
        print(
            f"\npy-spy, the service's gunicorn processes, {args.connections[0]} connections, "
            f"{args.duration}s:"
        )
        print(summarise_profile(profile))
    print(f"\nreproduce: {command_line()}")
    if missing or failed:
        sys.exit("acknowledged events are missing from the database, or errors were answered")


if __name__ == "__main__":
    main()
