"""Benchmark the worker's download path and the cost of a worker tick.

    python benchmarks/download.py [--engine sqlite|postgres] [--media local|s3]
                                  [--size-mib 1024] [--rounds 3] [--no-tick]

1. Download: the sandbox (its own process) serves one output of ``--size-mib``; curl
   (``curl -s -o FILE``, no hashing) and the worker (stream, sha256, store, record)
   each fetch it, alternating, ``--rounds`` times.  The worker runs in a child
   process so its peak RSS is its own.  ``--media local`` writes to disk (fsync,
   rename); ``--media s3`` streams a multipart upload to an S3-compatible server
   (moto's server mode, in its own process on loopback, so the objects it keeps in
   memory are not the worker's).  Reports each round's ratio to curl, the median
   and range, the worker's CPU time (all its threads: with the hashing on a second
   thread it can exceed the wall time), and its peak RSS next to its RSS before
   the download started.
2. Tick: claiming 100 due jobs and 100 due outputs in a database holding 100 000
   finished jobs, against the same in a database of 100 jobs, on ``--engine``.

``--engine postgres`` uses ``TEST_DATABASE_URL`` when set, else a private cluster.
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
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines import (  # noqa: E402
    command_line,
    load,
    postgres_server,
    spread,
    summarise_profile,
)

from webhook_service.config import load_settings  # noqa: E402
from webhook_service.demo import API_KEY as KEY  # noqa: E402
from webhook_service.demo import free_port, sandbox_command, wait_for  # noqa: E402
from webhook_service.modelgates import ModelGatesClient  # noqa: E402
from webhook_service.store import Store, open_store  # noqa: E402
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


def child(base_url: str, upstream_id: str, job_number: int, environ: dict[str, str]) -> None:
    """Download one output with the real worker; print wall time and peak RSS."""
    settings = load_settings(environ)
    store = open_store(settings)
    store.migrate()
    now = time.time()
    job_id = f"vj_bench{job_number}"
    with store.transaction():
        insert_job(store, job_number, "completed", upstream_id, now)
        store.create_outputs(job_id, 1, now)
    client = ModelGatesClient(base_url, KEY)
    worker = Worker(settings, client, concurrency=1)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    worker.run_once(now)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    output = store.output(job_id, 0)
    assert output is not None and output["status"] == "downloaded", output
    print(
        json.dumps(
            {
                "wall": wall,
                "cpu": cpu,
                "start_rss_mib": before.ru_maxrss / 1024,
                "peak_rss_mib": after.ru_maxrss / 1024,
                "bytes": output["bytes"],
            }
        )
    )


PROFILER = ["py-spy", "record", "--idle", "--rate", "200", "--format", "raw"]


def download_rounds(
    size: int,
    rounds: int,
    work: Path,
    storage_env: Callable[[Path], dict[str, str]],
    profile: Path | None = None,
    bucket_floor: Callable[[Path], float] | None = None,
) -> dict[str, list[float]]:
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
        curl_times, worker_times, cpu_times, starts, peaks, floors = [], [], [], [], [], []
        for round_ in range(rounds):
            target = work / "curl.out"
            started = time.perf_counter()
            subprocess.run(
                ["curl", "-s", "-o", str(target), "-H", f"Authorization: Bearer {KEY}", url],
                check=True,
            )
            curl_times.append(time.perf_counter() - started)
            if bucket_floor is not None:
                floors.append(bucket_floor(target))
            assert target.stat().st_size == size
            target.unlink()
            child_dir = Path(tempfile.mkdtemp(dir=work))
            environ = storage_env(child_dir)
            command = [sys.executable, __file__, "--child", base, job["id"], str(round_)]
            if profile is not None and round_ == rounds - 1:  # an extra, profiled round
                command = [*PROFILER, "--output", str(profile), "--", *command]
            answer = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env={**os.environ, **environ, "BENCH_CHILD_ENV": json.dumps(environ)},
            )
            if answer.returncode:
                sys.exit(f"the worker child failed:\n{answer.stderr}")
            output = answer.stdout
            result = json.loads([line for line in output.splitlines() if line[:1] == "{"][-1])
            assert result["bytes"] == size
            worker_times.append(result["wall"])
            cpu_times.append(result["cpu"])
            starts.append(result["start_rss_mib"])
            peaks.append(result["peak_rss_mib"])
            shutil.rmtree(child_dir)
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    if profile is not None:  # the profiled round is not counted
        for series in (curl_times, worker_times, cpu_times, starts, peaks, floors):
            if series:  # no bucket floor on disk
                series.pop()
    return {
        "curl": curl_times,
        "worker": worker_times,
        "cpu": cpu_times,
        "start_rss_mib": starts,
        "peak_rss_mib": peaks,
        "bucket": floors,
    }


def tick_cost(finished: int, due: int, store: Store, repeats: int = 20) -> float:
    """Median seconds to claim ``due`` jobs and outputs among ``finished`` finished jobs."""
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
        environ = json.loads(os.environ["BENCH_CHILD_ENV"])
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), environ)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--media", choices=("local", "s3"), default="local")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-tick", action="store_true", help="skip the worker tick benchmark")
    parser.add_argument(
        "--profile", action="store_true", help="one more round with the worker under py-spy"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="download-bench-", dir=os.environ.get("BENCH_DIR")))
    postgres = postgres_server() if args.engine == "postgres" else nullcontext()
    s3 = nullcontext()
    if args.media == "s3":
        sys.path.insert(0, str(ROOT / "tests"))
        from s3server import S3Server

        s3 = S3Server(separate_process=True)
    load_before = load()
    try:
        with postgres as create_pg, s3 as server:
            rounds_started = iter(range(1_000))
            media: dict[str, str] = {}
            if server is not None:
                media = {**server.environ(), "MEDIA_STORAGE": f"s3://{server.create_bucket()}/b"}

            def storage_env(folder: Path) -> dict[str, str]:
                """A fresh database (the sandbox job is the same every round) and the media."""
                database = {"DATABASE_PATH": str(folder / "child.sqlite3")}
                if create_pg is not None:
                    database = {"DATABASE_URL": create_pg(f"download{next(rounds_started)}")}
                return {"MEDIA_DIR": str(folder / "videos"), **database, **media}

            size = args.size_mib * 1024 * 1024
            profile = work / "profile.txt" if args.profile else None
            rounds = args.rounds + (1 if profile else 0)
            floor = None
            if server is not None:

                def floor(path: Path) -> float:
                    """Seconds for boto3 alone to upload curl's file: the bucket's pace."""
                    from boto3.s3.transfer import TransferConfig

                    started = time.perf_counter()
                    server.client().upload_file(
                        str(path),
                        media["MEDIA_STORAGE"].split("/")[2],
                        "floor.bin",
                        Config=TransferConfig(
                            multipart_chunksize=8 * 1024 * 1024, max_concurrency=1
                        ),
                    )
                    return time.perf_counter() - started

            result = download_rounds(size, rounds, work, storage_env, profile, floor)
            summary = summarise_profile(profile) if profile else ""
            if args.no_tick:
                small = large = None
            else:
                small, large = (
                    tick_cost(finished, 100, tick_store(args.engine, create_pg, work, finished))
                    for finished in (100, 100_000)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    curl, ours = result["curl"], result["worker"]
    ratios = [w / c for c, w in zip(curl, ours, strict=True)]
    store_step = "multipart upload" if args.media == "s3" else "fsync + rename"
    print(
        f"\ndownload of {args.size_mib} MiB from the sandbox, engine {args.engine}, media "
        f"{args.media}; median (min-max) of {args.rounds} rounds"
    )
    print(f"  {load_before} before, {load()} after")
    print(f"  curl -s -o FILE : {spread(curl, '{:.2f}')} s")
    print(
        f"  worker          : {spread(ours, '{:.2f}')} s  (stream + sha256 + {store_step} + record)"
    )
    print(f"  ratio           : {spread(ratios, '{:.2f}')}x curl")
    print(f"  worker CPU time : {spread(result['cpu'], '{:.2f}')} s  (user + system, all threads)")
    if result["bucket"]:
        bucket = result["bucket"]
        floor_ratios = [w / (c + b) for c, b, w in zip(curl, bucket, ours, strict=True)]
        print(
            "  boto3 upload_file of curl's file, 8 MiB parts, one at a time: "
            f"{spread(bucket, '{:.2f}')} s"
        )
        print(f"  ratio to curl + that upload: {spread(floor_ratios, '{:.2f}')}x")
    print(
        f"  worker peak RSS : {spread(result['peak_rss_mib'], '{:.1f}')} MiB "
        f"({spread(result['start_rss_mib'], '{:.1f}')} MiB before the download)"
    )
    if small is not None and large is not None:
        print(f"\nworker tick on {args.engine}: claim 100 due jobs + 100 due outputs")
        print(f"  among 100 jobs      : {small * 1000:.2f} ms")
        print(f"  among 100 000 jobs  : {large * 1000:.2f} ms  ({large / small:.2f}x)")
    if summary:
        print("\npy-spy, the worker during one more (uncounted) round:")
        print(summary)
    print(f"\nreproduce: {command_line()}")


def tick_store(engine: str, create_pg: Callable[[str], str] | None, work: Path, jobs: int) -> Store:
    """A fresh, empty store for the tick benchmark."""
    if engine == "postgres" and create_pg is not None:
        from webhook_service.store.postgres import PostgresStore

        return PostgresStore(create_pg(f"tick{jobs}"))
    from webhook_service.store.sqlite import SqliteStore

    return SqliteStore(work / f"tick-{jobs}.sqlite3")


if __name__ == "__main__":
    main()
