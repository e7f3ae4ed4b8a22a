"""Benchmark the callback receiver against a bare Flask endpoint, same gunicorn shape.

    python benchmarks/receiver.py [--duration 10]

Both servers run as gunicorn with the Procfile's workers and threads on loopback;
wrk (Debian package ``wrk``; installed if missing and we are root) sends signed
callbacks for known jobs, 10 % of them duplicates, at 16 and 64 connections.
Then 16 threads send more events, noting each one answered 204: every one of those
must be in the database.  Prints a table; exits non-zero if one is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webhook_service.signatures import sign  # noqa: E402
from webhook_service.store import Store  # noqa: E402
from webhook_service.store.sqlite import SqliteStore  # noqa: E402

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


def start_gunicorn(target: str, port: int, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            target,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            WORKERS,
            "--threads",
            THREADS,
            "--log-level",
            "warning",
        ],
        cwd=cwd,
        env={**os.environ, **env},
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


def verify_acknowledged(url: str, store: Store, seconds: int) -> tuple[int, int]:
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
        for row in store.db.execute(
            "SELECT idempotency_key FROM events WHERE idempotency_key LIKE 'verify-%'"
        )
    }
    return len(acknowledged), len(acknowledged - stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--events", type=int, default=60_000, help="signed requests per run")
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="receiver-bench-"))
    db_path = work / "bench.sqlite3"
    store = SqliteStore(db_path)
    store.migrate()
    make_jobs(store, 100_000)
    env = {
        "DATABASE_PATH": str(db_path),
        "MEDIA_DIR": str(work / "videos"),
        "MODELGATES_WEBHOOK_SECRETS": SECRET,
        "TRUSTED_PROXY_COUNT": "0",
    }
    ours_port, bare_port = free_port(), free_port()
    ours = start_gunicorn("wsgi:app", ours_port, env, ROOT)
    bare = start_gunicorn("bare_app:app", bare_port, {}, ROOT / "benchmarks")
    rows = []
    try:
        for index, connections in enumerate((16, 64)):
            script = work / f"events{connections}.lua"
            write_script(script, args.events, offset=index * args.events)
            bare_result = run_wrk(
                wrk, f"http://127.0.0.1:{bare_port}", script, connections, args.duration
            )
            ours_result = run_wrk(
                wrk, f"http://127.0.0.1:{ours_port}", script, connections, args.duration
            )
            rows.append((connections, bare_result, ours_result))
        acked, missing = verify_acknowledged(f"http://127.0.0.1:{ours_port}", store, args.duration)
    finally:
        for process in (ours, bare):
            process.terminate()
            process.wait(15)
    print(
        f"\nreceiver benchmark: gunicorn {WORKERS} workers x {THREADS} threads, wrk "
        f"{THREADS_WRK} threads, {args.duration}s per run, 10% duplicate deliveries\n"
    )
    print("conns | bare req/s | ours req/s | ratio | bare p50/p99 ms | ours p50/p99 ms | non-2xx")
    for connections, bare_result, ours_result in rows:
        print(
            f"{connections:>5} | {bare_result['rps']:>10.0f} | {ours_result['rps']:>10.0f} | "
            f"{ours_result['rps'] / bare_result['rps']:.2f} | "
            f"{bare_result['p50']:.2f}/{bare_result['p99']:.2f} | "
            f"{ours_result['p50']:.2f}/{ours_result['p99']:.2f} | {ours_result['non_2xx']}"
        )
    print(
        f"\nacknowledgement check ({VERIFY_THREADS} concurrent senders, {args.duration}s): "
        f"{acked} unique events answered 204, {missing} of them missing from the database"
    )
    shutil.rmtree(work, ignore_errors=True)
    if missing or any(r[2]["non_2xx"] for r in rows):
        sys.exit("acknowledged events are missing from the database, or errors were answered")


if __name__ == "__main__":
    main()
