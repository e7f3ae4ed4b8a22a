"""Benchmark streaming one large output through the media seam: bucket next to disk.

    python benchmarks/media_s3.py [--size-mib 1024] [--limit-mib 96] [--source-mib-per-s 0]

An S3-compatible server (moto's server mode) runs in its own process on 127.0.0.1,
so the objects it holds in memory are not counted against the writer.  For each
engine a fresh child process generates ``--size-mib`` of bytes in 1 MiB chunks and
writes them through ``open_partial(...).write`` and ``commit()``, as the worker does
with a download; it reports its wall time and peak RSS (``ru_maxrss``) and the
sha256 it computed on the way.  The parent checks the hash and the stored size, and
fails if the bucket writer's peak RSS reaches ``--limit-mib``.

``--source-mib-per-s`` hands the chunks over no faster than that, and never more
than ``WINDOW`` MiB ahead of the writer, as an upstream on a real network would
(a TCP receive window; the pacing sleeps, so it costs no CPU).  Sending a part
while the next one arrives then shows: the time approaches the slower of the source
and the bucket instead of their sum, both printed next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from webhook_service.media import open_media  # noqa: E402

JOB = "vj_benchmark"
CHUNK = 1024 * 1024
WINDOW = 4  # chunks a paced sender may be ahead of the reader


def generated(size_mib: int) -> Iterator[bytes]:
    """Deterministic, incompressible-looking chunks, each different."""
    block = hashlib.sha256(b"seed").digest() * (CHUNK // 32)
    for n in range(size_mib):
        yield n.to_bytes(8, "big") + block[8:]


def expected_sha256(size_mib: int) -> str:
    digest = hashlib.sha256()
    for chunk in generated(size_mib):
        digest.update(chunk)
    return digest.hexdigest()


def child(engine: str, size_mib: int, folder: str, bucket: str, pace: float) -> None:
    """Write the generated output through the seam; print what it cost as JSON."""
    if engine == "s3":
        storage = open_media(media_storage=f"s3://{bucket}/bench")
    else:
        storage = open_media(media_dir=folder)
    storage.check()
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    storage.remove_stale(JOB, 0)
    target = storage.open_partial(JOB, 0, fence=1)
    ready, taken = started, []
    for n, chunk in enumerate(generated(size_mib)):
        if pace:
            # A sender at ``pace`` that is never more than WINDOW chunks ahead of the
            # reader (TCP's receive window): a reader that stops, stops the sender.
            ready = max(ready, taken[n - WINDOW] if n >= WINDOW else started) + 1 / pace
            time.sleep(max(0.0, ready - time.perf_counter()))
        target.write(chunk)
        taken.append(time.perf_counter())
    target.commit()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "start_kib": before_kib,
                "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "sha256": target.sha256,
                "size": target.size,
            }
        )
    )


def run_child(
    engine: str, size_mib: int, folder: str, bucket: str, pace: float, env: dict[str, str]
) -> dict:
    command = [sys.executable, __file__, "--child", engine, "--size-mib", str(size_mib)]
    command += ["--folder", folder, "--bucket", bucket, "--source-mib-per-s", str(pace)]
    answer = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if answer.returncode != 0:
        raise SystemExit(f"{engine} writer failed:\n{answer.stderr}")
    return json.loads(answer.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--limit-mib", type=int, default=96)
    parser.add_argument(
        "--source-mib-per-s",
        type=float,
        default=0.0,
        help="hand the chunks over no faster than this (0: as fast as they are made)",
    )
    parser.add_argument("--child", choices=["local", "s3"])
    parser.add_argument("--folder", default="")
    parser.add_argument("--bucket", default="")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.size_mib, args.folder, args.bucket, args.source_mib_per_s)
        return 0

    from s3server import S3Server

    expected = expected_sha256(args.size_mib)
    rows = []
    with tempfile.TemporaryDirectory() as folder, S3Server(separate_process=True) as server:
        bucket = server.create_bucket()
        env = server.environ()
        pace = args.source_mib_per_s
        runs = [("local", pace), ("s3", 0.0)] + ([("s3", pace)] if pace else [])
        for engine, engine_pace in runs:
            result = run_child(engine, args.size_mib, folder, bucket, engine_pace, env)
            if result["sha256"] != expected or result["size"] != args.size_mib * CHUNK:
                raise SystemExit(f"{engine}: wrong bytes written")
            rows.append((f"{engine} paced" if engine_pace else engine, result))
        stored = server.client().head_object(Bucket=bucket, Key=f"bench/{JOB}/0.mp4")
        if stored["ContentLength"] != args.size_mib * CHUNK or server.uploads(bucket):
            raise SystemExit("s3: the stored object is not whole, or an upload was left behind")
        local_size = (Path(folder) / JOB / "0.mp4").stat().st_size
        if local_size != args.size_mib * CHUNK:
            raise SystemExit("local: the stored file is not whole")

    baseline = rows[0][1]["seconds"]
    print(f"{args.size_mib} MiB through PartialObject (sha256 {expected[:16]}…)")
    print(f"{'engine':<12}{'seconds':>9}{'ratio':>8}{'RSS start MiB':>15}{'peak RSS MiB':>14}")
    for engine, result in rows:
        print(
            f"{engine:<12}{result['seconds']:>9.1f}{result['seconds'] / baseline:>8.2f}"
            f"{result['start_kib'] / 1024:>15.1f}{result['peak_kib'] / 1024:>14.1f}"
        )
    if args.source_mib_per_s:
        source = args.size_mib / args.source_mib_per_s
        bucket_alone = rows[1][1]["seconds"]
        print(
            f"source alone {source:.1f} s, bucket alone {bucket_alone:.1f} s: "
            f"{source + bucket_alone:.1f} s one after the other, "
            f"{max(source, bucket_alone):.1f} s overlapped at best; "
            f"the paced bucket writer took {rows[2][1]['seconds']:.1f} s"
        )
    peak_mib = max(result["peak_kib"] for engine, result in rows if engine.startswith("s3")) / 1024
    if peak_mib >= args.limit_mib:
        print(f"FAIL: bucket writer peak RSS {peak_mib:.1f} MiB >= {args.limit_mib} MiB")
        return 1
    print(f"ok: bucket writer peak RSS {peak_mib:.1f} MiB < {args.limit_mib} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
