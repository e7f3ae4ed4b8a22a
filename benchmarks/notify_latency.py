"""Benchmark the latency from an upstream callback to the download and to the client's notification.

    python benchmarks/notify_latency.py [--engine sqlite|postgres] [--jobs 200]
                                        [--interval 0.25] [--idle-seconds 30]

The whole deployment on loopback: the sandbox upstream (its own process, logging
every request with a microsecond timestamp), the Procfile's ``release``, ``web``
and ``worker`` lines, and a receiver in this process that stands for the client's
app (``ALLOW_PRIVATE_NOTIFY_URLS=1``).  ``--jobs`` jobs with the sandbox's small
sample video and a ``notify_url`` are submitted one every ``--interval`` seconds, so
the worker is idle when each callback arrives.  Per job:

- wake-up: the stored callback's ``received_at`` (and the sandbox's log line for
  the 204 it got back) to the first content request reaching the sandbox;
- notification: the stored callback's ``received_at`` to the notification arriving
  at the receiver (which verifies it with the ``standardwebhooks`` library).

Then, with no work left, the CPU time the idle worker (and, for scale, the web
line) uses over ``--idle-seconds``, from /proc.  The baseline printed alongside is
the loopback floor measured in the same run: the median time for this process to
POST to its own receiver over a fresh connection.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines import (  # noqa: E402
    command_line,
    load,
    percentile,
    postgres_server,
    query,
    spread,
    start_profile,
    summarise_profile,
)

from webhook_service.demo import (  # noqa: E402
    API_TOKEN,
    Processes,
    free_port,
    local_env,
    read_procfile,
    sandbox_command,
    wait_for,
)

SANDBOX_LOGGING = (
    "import logging; logging.basicConfig(format='%(created).6f %(name)s: %(message)s'); "
    "from webhook_service.sandbox.cli import sandbox_command; "
    "sandbox_command(prog_name='sandbox')"
)
CONTENT = re.compile(r"^(\d+\.\d+) .*\"GET /api/v1/videos/([^/\s]+)/content")
CALLBACK = re.compile(r"^(\d+\.\d+) .*sandbox: callback (\S+)-completed -> 204$")


class Receiver(ThreadingHTTPServer):
    """The client's app: notes when each notification arrives, then verifies it."""

    daemon_threads = True

    def __init__(self, secret: str) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.webhook = Webhook(secret)
        self.arrived: dict[str, float] = {}
        self.unverified = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        arrived = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if self.path != "/hook":
            return
        try:
            event = self.server.webhook.verify(body, dict(self.headers.items()))
        except Exception:
            with self.server.lock:
                self.server.unverified += 1
            return
        with self.server.lock:
            self.server.arrived.setdefault(event["data"]["id"], arrived)

    def log_message(self, format: str, *args: Any) -> None:
        return


def loopback_floor(port: int, rounds: int = 50) -> float:
    """Median seconds for a POST over a fresh loopback connection to the receiver (baseline)."""
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/floor", body=b"{}")
        connection.getresponse().read()
        connection.close()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


PROBE = """
import json, sys, time
overshoot = []
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    started = time.perf_counter()
    time.sleep(0.005)
    overshoot.append(time.perf_counter() - started - 0.005)
print(json.dumps(overshoot))
"""


def start_probe(seconds: float) -> subprocess.Popen[str]:
    """A process that sleeps 5 ms again and again, noting how late it wakes: the machine's
    scheduling delay in the same run, the floor under any wake-up latency."""
    return subprocess.Popen(
        [sys.executable, "-c", PROBE, str(seconds)], stdout=subprocess.PIPE, text=True
    )


def run_queue_seconds(pid: int) -> float:
    """Seconds the threads of ``pid`` have spent runnable but waiting for a core."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def cpu_seconds(group: int) -> float:
    """User + system CPU seconds of every live process in process group ``group``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == group:  # pgrp; utime and stime are fields 14 and 15 of stat
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between submits")
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument(
        "--profile", action="store_true", help="sample the worker with py-spy while jobs run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="whole runs, each on a fresh deploy")
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    with postgres_server() if args.engine == "postgres" else nullcontext() as create_pg:
        for number in range(args.repeats):
            home = Path(tempfile.mkdtemp(prefix="notify-bench-"))
            try:
                database = (
                    create_pg(f"notify{number}")
                    if create_pg
                    else str(home / "webhook_service.sqlite3")
                )
                runs.append(run(args, home, database, profile=args.profile and number == 0))
            finally:
                shutil.rmtree(home, ignore_errors=True)
    print(
        f"\nsummary, engine {args.engine}: median (min-max) over {len(runs)} runs of "
        f"{args.jobs} jobs each"
    )
    for key, label in SUMMARY:
        print(f"  {label:<58} {spread([r[key] for r in runs], '{:.1f}')}")
    print(f"\nreproduce: {command_line()}")


SUMMARY = (
    ("wake_p50", "callback stored -> first content request, p50 ms"),
    ("wake_p99", "callback stored -> first content request, p99 ms"),
    ("wake204_p50", "callback 204 -> first content request, p50 ms"),
    ("wake204_p99", "callback 204 -> first content request, p99 ms"),
    ("notify_p50", "callback stored -> notification arrives, p50 ms"),
    ("notify_p99", "callback stored -> notification arrives, p99 ms"),
    ("probe_p99", "machine: 5 ms sleep overshoot, p99 ms"),
    ("idle_worker", "idle worker CPU, % of a core"),
    ("idle_web", "idle web line CPU, % of a core"),
)


def run(args: argparse.Namespace, home: Path, database: str, profile: bool) -> dict[str, float]:
    """Deploy, run the jobs, print this run's figures and return them."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = Receiver(secret)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    sandbox_port, web_port = free_port(), free_port()
    sandbox_url, web_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{web_port}"
    env = {
        **local_env(home, sandbox_url, web_port),
        "NOTIFY_SIGNING_SECRET": secret,
        "ALLOW_PRIVATE_NOTIFY_URLS": "1",
        "POLL_AFTER_SECONDS": "120",  # the default: the callback is the road measured
        "POLL_INTERVAL_SECONDS": "30",
    }
    if database.startswith("postgresql://"):
        env["DATABASE_URL"] = database
    procfile = read_procfile(ROOT / "Procfile")
    processes = Processes(home, cwd=home)
    # The demo's sandbox line, logging with microsecond timestamps; the last option wins.
    sandbox = sandbox_command(
        sandbox_port, "--verbose", "--pending-seconds", "0.05", "--in-progress-seconds", "0.05"
    ).replace(
        shlex.join(["-m", "webhook_service.cli", "sandbox"]), shlex.join(["-c", SANDBOX_LOGGING])
    )
    try:
        processes.start("sandbox", sandbox, env)
        release = processes.start("release", procfile["release"], env)
        release.wait(120)
        del processes.running["release"]
        if release.returncode:
            sys.exit("release failed:\n" + processes.tail("release"))
        processes.start("web", procfile["web"], env)
        worker = processes.start("worker", procfile["worker"], env)
        wait_for(lambda: httpx.get(f"{sandbox_url}/_sandbox/stats").is_success, 30, "sandbox")
        wait_for(lambda: httpx.get(f"{web_url}/healthz").is_success, 30, "web", processes.check)
        floor = loopback_floor(receiver.server_address[1])
        load_before = load()
        jobs: list[str] = []
        probe = start_probe(args.jobs * args.interval)
        waited = run_queue_seconds(worker.pid)
        spy = None
        if profile:
            spy = start_profile(worker.pid, args.jobs * args.interval, home / "profile.txt")
        with httpx.Client(
            base_url=web_url, timeout=30, headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as api:
            for n in range(args.jobs):
                started = time.monotonic()
                answer = api.post(
                    "/api/jobs",
                    json={
                        "model": "sandbox/tiny",
                        "prompt": f"bench {n}",
                        "notify_url": receiver.url,
                    },
                )
                if answer.status_code != 202:
                    sys.exit(f"submit answered {answer.status_code}: {answer.text}")
                jobs.append(answer.json()["id"])
                time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
        wait_for(
            lambda: len(receiver.arrived) >= len(jobs), 120, "every notification", processes.check
        )
        load_after = load()
        waited = run_queue_seconds(worker.pid) - waited
        overshoot = json.loads(probe.communicate(timeout=60)[0])
        if spy is not None:
            spy.wait(60)
        time.sleep(2)  # let the last round finish before the idle measurement
        web_group = processes.running["web"].pid
        idle_before = cpu_seconds(worker.pid), cpu_seconds(web_group)
        time.sleep(args.idle_seconds)
        idle_after = cpu_seconds(worker.pid), cpu_seconds(web_group)
    finally:
        processes.stop()
        receiver.shutdown()
    figures = report(args, home, database, jobs, receiver, floor, (load_before, load_after))
    print(
        f"  machine: a 5 ms sleep wakes late by p50 {percentile(overshoot, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(overshoot, 0.99) * 1000:.1f} ms, max {max(overshoot) * 1000:.1f} ms "
        f"(a probe process, same run); the worker's threads waited {waited:.2f} s in all for a "
        "core while the jobs ran"
    )
    worker_cpu = idle_after[0] - idle_before[0]
    web_cpu = idle_after[1] - idle_before[1]
    print(
        f"\nidle over {args.idle_seconds:.0f} s: worker {worker_cpu:.2f} CPU s "
        f"({100 * worker_cpu / args.idle_seconds:.2f} % of a core); web line (arbiter + 2 workers) "
        f"{web_cpu:.2f} CPU s ({100 * web_cpu / args.idle_seconds:.2f} %)"
    )
    if profile:
        print(f"\npy-spy, the worker process, while the {len(jobs)} jobs ran:")
        print(summarise_profile(home / "profile.txt"))
    return {
        **figures,
        "probe_p99": percentile(overshoot, 0.99) * 1000,
        "idle_worker": 100 * worker_cpu / args.idle_seconds,
        "idle_web": 100 * web_cpu / args.idle_seconds,
    }


def report(
    args: argparse.Namespace,
    home: Path,
    database: str,
    jobs: list[str],
    receiver: Receiver,
    floor: float,
    loads: tuple[str, str],
) -> dict[str, float]:
    upstream = dict(query(database, "SELECT id, upstream_id FROM jobs"))
    received = dict(
        query(
            database,
            "SELECT upstream_id, min(received_at) FROM events WHERE verdict = ?"
            " GROUP BY upstream_id",
            ["applied"],
        )
    )
    content: dict[str, float] = {}
    callback: dict[str, float] = {}
    for line in (home / "sandbox.log").read_text(errors="replace").splitlines():
        if match := CONTENT.match(line):
            content.setdefault(match.group(2), float(match.group(1)))
        elif match := CALLBACK.match(line):
            callback.setdefault(match.group(2), float(match.group(1)))
    wake, wake_204, notify = [], [], []
    for job in jobs:
        up = upstream[job]
        if up not in received:
            sys.exit(f"{job}: no applied callback stored (it may have completed by poll)")
        wake.append(content[up] - received[up])
        wake_204.append(content[up] - callback[up])
        notify.append(receiver.arrived[job] - received[up])

    def row(name: str, values: list[float]) -> str:
        p50, p90, p99 = (percentile(values, share) for share in (0.5, 0.9, 0.99))
        slow = sum(value > 0.1 for value in values)
        return (
            f"  {name:<52} p50 {p50 * 1000:6.1f}  p90 {p90 * 1000:6.1f}  p99 {p99 * 1000:6.1f}  "
            f"max {max(values) * 1000:6.1f} ms; {slow} over 100 ms"
        )

    print(
        f"\npipeline latency, engine {args.engine}: {len(jobs)} jobs with the sample video, one "
        f"every {args.interval} s"
    )
    print(f"  {loads[0]} before, {loads[1]} after")
    print(f"  baseline: a loopback POST from a fresh connection, median {floor * 1000:.2f} ms")
    print(row("callback stored (received_at) -> first content request", wake))
    print(row("callback 204 (sandbox's clock) -> first content request", wake_204))
    print(row("callback stored (received_at) -> notification arrives", notify))
    print(f"  notifications that failed verification: {receiver.unverified}")
    figures = {}
    for key, values in (("wake", wake), ("wake204", wake_204), ("notify", notify)):
        figures[f"{key}_p50"] = percentile(values, 0.5) * 1000
        figures[f"{key}_p99"] = percentile(values, 0.99) * 1000
    return figures


if __name__ == "__main__":
    main()
