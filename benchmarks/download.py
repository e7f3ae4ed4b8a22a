"""Benchmark the worker's download path and the cost of a worker tick.

    python benchmarks/download.py [--size-mib 1024] [--rounds 2]

1. Download: the sandbox (its own process) serves one output of ``--size-mib``; curl
   (``curl -s -o FILE``, no hashing) and the worker (stream, sha256, fsync, rename,
   record) each fetch it, alternating, ``--rounds`` times.  The worker runs in a child
   process so its peak RSS is its own.  Reports wall-time ratio and peak RSS.
2. Tick: claiming 100 due jobs and 100 due outputs in a database holding 100 000
   finished jobs, against the same in a database of 100 jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webhook_service.config import load_settings  # noqa: E402
from webhook_service.demo import API_KEY as KEY  # noqa: E402
from webhook_service.demo import free_port, sandbox_command, wait_for  # noqa: E402
from webhook_service.modelgates import ModelGatesClient  # noqa: E402
from webhook_service.store import Store  # noqa: E402
from webhook_service.store.sqlite import SqliteStore  # noqa: E402
from webhook_service.worker import Worker  # noqa: E402


def insert_job(
    store: Store,
    n: int,
    status: str,
    upstream_id: str,
    now: float,
    next_poll_at: float | None = None,
) -> None:
    store.insert_job(
        {
            "id": f"vj_bench{n}",
            "upstream_id": upstream_id,
            "callback_token": f"tok{n}",
            "client": "bench",
            "request_hash": "x",
            "status": status,
            "model": "sandbox/tiny",
            "prompt": "bench",
            "params": {},
            "created_at": now,
            "updated_at": now,
            "finished_at": now if status == "completed" else None,
            "outputs_known": 1,
            "submit_outcome": "accepted",
            "next_poll_at": next_poll_at,
        }
    )


def child(base_url: str, upstream_id: str, work: Path) -> None:
    """Download one output with the real worker; print wall time and peak RSS."""
    settings = load_settings(
        {"DATABASE_PATH": str(work / "child.sqlite3"), "MEDIA_DIR": str(work / "videos")}
    )
    store = SqliteStore(settings.database_path)
    store.migrate()
    now = time.time()
    with store.transaction():
        insert_job(store, 0, "completed", upstream_id, now)
        store.create_outputs("vj_bench0", 1, now)
    client = ModelGatesClient(base_url, KEY)
    worker = Worker(settings, client, concurrency=1)
    started = time.perf_counter()
    worker.run_once(now)
    wall = time.perf_counter() - started
    output = store.output("vj_bench0", 0)
    assert output is not None and output["status"] == "downloaded", output
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall": wall, "peak_rss_mib": peak_kib / 1024, "bytes": output["bytes"]}))


def download_rounds(size: int, rounds: int, work: Path) -> dict[str, object]:
    port = free_port()
    sandbox = subprocess.Popen(
        [
            "bash",
            "-c",
            sandbox_command(
                port,
                "--content-size",
                str(size),
                "--pending-seconds",
                "0",
                "--in-progress-seconds",
                "0",
            ),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/_sandbox/stats").is_success,
            20,
            "sandbox did not start",
        )
        headers = {"Authorization": f"Bearer {KEY}"}
        job = httpx.post(
            f"{base}/videos", headers=headers, json={"model": "sandbox/tiny", "prompt": "bench"}
        ).json()
        wait_for(
            lambda: (
                httpx.get(f"{base}/videos/{job['id']}", headers=headers).json()["status"]
                == "completed"
            ),
            20,
            "sandbox job did not complete",
        )
        url = f"{base}/videos/{job['id']}/content?index=0"
        curl_times, worker_times, peaks = [], [], []
        for _ in range(rounds):
            target = work / "curl.out"
            started = time.perf_counter()
            subprocess.run(
                ["curl", "-s", "-o", str(target), "-H", f"Authorization: Bearer {KEY}", url],
                check=True,
            )
            curl_times.append(time.perf_counter() - started)
            assert target.stat().st_size == size
            target.unlink()
            child_dir = Path(tempfile.mkdtemp(dir=work))
            result = json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--child", base, job["id"], str(child_dir)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )
            assert result["bytes"] == size
            worker_times.append(result["wall"])
            peaks.append(result["peak_rss_mib"])
            shutil.rmtree(child_dir)
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    return {
        "curl": statistics.median(curl_times),
        "worker": statistics.median(worker_times),
        "peak_rss_mib": max(peaks),
    }


def tick_cost(finished: int, due: int, work: Path, repeats: int = 20) -> float:
    """Median seconds to claim ``due`` jobs and outputs among ``finished`` finished jobs."""
    store = SqliteStore(work / f"tick-{finished}.sqlite3")
    store.migrate()
    now = time.time()
    with store.transaction():
        for n in range(finished):
            insert_job(store, n, "completed", f"job-done{n}", now - 3600)
    timings = []
    for round_ in range(repeats):
        with store.transaction():
            for n in range(due):
                job_number = finished + round_ * due + n
                insert_job(
                    store, job_number, "pending", f"job-due{job_number}", now, next_poll_at=now - 1
                )
                store.create_outputs(f"vj_bench{job_number}", 1, now - 1)
        started = time.perf_counter()
        jobs = store.claim_due_jobs("bench", now, now + 60, due)
        outputs = store.claim_due_outputs("bench", now, now + 60, due)
        store.next_due_at()
        timings.append(time.perf_counter() - started)
        assert len(jobs) == due and len(outputs) == due
        with store.transaction():  # finish the work so the next round starts clean
            for job in jobs:
                store.finish_job_claim(job["id"], job["fence"], {"next_poll_at": None})
            for output in outputs:
                store.finish_output_claim(
                    output["job_id"],
                    0,
                    output["fence"],
                    {"next_attempt_at": None, "status": "downloaded"},
                )
    store.close()
    return statistics.median(timings)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="download-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        size = args.size_mib * 1024 * 1024
        result = download_rounds(size, args.rounds, work)
        small, large = tick_cost(100, 100, work), tick_cost(100_000, 100, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndownload of {args.size_mib} MiB from the sandbox, median of {args.rounds} rounds")
    print(f"  curl -s -o FILE : {result['curl']:.2f} s")
    print(
        f"  worker          : {result['worker']:.2f} s  (stream + sha256 + fsync + rename + record)"
    )
    print(f"  ratio           : {result['worker'] / result['curl']:.2f}x curl")
    print(f"  worker peak RSS : {result['peak_rss_mib']:.1f} MiB")
    print("\nworker tick: claim 100 due jobs + 100 due outputs")
    print(f"  among 100 jobs      : {small * 1000:.2f} ms")
    print(f"  among 100 000 jobs  : {large * 1000:.2f} ms  ({large / small:.2f}x)")


if __name__ == "__main__":
    main()
