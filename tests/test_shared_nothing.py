"""A deployment that shares nothing, as on a Heroku-style platform.

Two ``web`` and two ``worker`` processes run the Procfile's own lines with ``bash -c``
and ``PORT`` set, each in its own empty working directory with its own ``TMPDIR``:
no folder is shared.  State lives in a fresh PostgreSQL database, videos in a bucket
of a real S3-compatible server (moto, in its own process, on loopback).  The
``release`` line runs at the same moment as the others start, on an unmigrated
database.  The sandbox upstream, in this process, calls back one of the web
processes and delivers, drops or duplicates callbacks per job; jobs go alternately
to both web processes.

Checked: every job completes; every output is fetched from upstream exactly once;
every object in the bucket has the sha256 the sandbox served; the video endpoint
redirects to a short-lived URL that serves the same bytes, ranges included.  Then
every process gets SIGTERM and all four start again on new empty folders: nothing
is lost, nothing is fetched again, and a new job completes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from pg import PostgresServer
from s3server import S3Server

from webhook_service.demo import (
    API_KEY,
    API_TOKEN,
    STOP_SECONDS,
    WEBHOOK_SECRET,
    DemoFailed,
    Processes,
    free_port,
    local_env,
    read_procfile,
    wait_for,
)
from webhook_service.sandbox import SandboxServer, SandboxSettings
from webhook_service.store.postgres import DEFAULT_POOL_SIZE
from webhook_service.store.postgres_schema import MIGRATIONS

REPO = Path(__file__).resolve().parent.parent
PROCFILE = read_procfile(REPO / "Procfile")
BUCKET = "platform-videos"
PREFIX = "deploy"
MULTIPART_SIZE = 9 * 1024 * 1024  # over one 8 MiB part: the upload is multipart
PRESIGN_LIMIT_SECONDS = 15 * 60
WEB_CONCURRENCY = 2  # gunicorn workers per web process, as the Procfile's default
# One entry per job: the sandbox's per-job passthrough parameters.  Each output has
# its own pseudo-random bytes (a function of the upstream job id and index), so a
# video stored under the wrong key cannot match.
JOBS: list[dict[str, Any]] = [
    {"callback": "deliver", "outputs": 2, "content_size": 300_001},
    {"callback": "drop", "content_size": 300_002},
    {"callback": "duplicate", "content_size": 300_003},
    {"callback": "deliver", "content_size": MULTIPART_SIZE},
    {"callback": "drop", "outputs": 2, "content_size": 300_005},
    {"callback": "duplicate", "outputs": 2, "content_size": 300_006},
]
CALLBACKS_ACKNOWLEDGED = {"deliver": 1, "drop": 0, "duplicate": 2}
SOURCE = {"deliver": "callback", "drop": "poll", "duplicate": "callback"}

pytestmark = pytest.mark.timeout(240)


def wait_until(check: Callable[[], bool], seconds: float, what: str, alive: Any = None) -> None:
    """Poll ``check`` with a deadline; fail with a dead process's output if one died."""
    try:
        wait_for(check, seconds, what, alive or (lambda: None))
    except DemoFailed as error:
        raise AssertionError(str(error)) from None


class Platform:
    """Procfile processes, each on its own empty folders, sharing only the database and bucket."""

    def __init__(self, home: Path, database_url: str, s3: S3Server, sandbox: SandboxServer) -> None:
        self.home = home
        self.database_url = database_url
        self.s3 = s3
        self.sandbox = sandbox
        self.boots = 0
        self.nodes: dict[str, Processes] = {}
        self.folders: dict[str, tuple[Path, Path]] = {}
        self.web_urls: list[str] = []

    def environ(self, name: str, port: int, public_url: str) -> dict[str, str]:
        cwd, tmp = self.folders[name]
        env = {
            key: value
            for key, value in local_env(cwd, self.sandbox.base_url, port).items()
            if not key.startswith("AWS_") and key not in ("DATABASE_PATH", "MEDIA_DIR")
        }
        env.update(self.s3.environ())
        env.update(
            DATABASE_URL=self.database_url,
            MEDIA_STORAGE=f"s3://{BUCKET}/{PREFIX}",
            MODELGATES_BASE_URL=self.sandbox.base_url,
            PUBLIC_BASE_URL=public_url,
            POLL_AFTER_SECONDS="5",  # a slow callback on a busy machine still beats the poll
            POLL_INTERVAL_SECONDS="1",
            TMPDIR=str(tmp),
            WEB_CONCURRENCY=str(WEB_CONCURRENCY),
        )
        return env

    def start(self, name: str, kind: str, port: int, public_url: str) -> Processes:
        """Run the Procfile's ``kind`` line as a platform does, in new empty folders."""
        node = self.home / f"boot-{self.boots}" / name
        cwd, tmp = node / "cwd", node / "tmp"
        cwd.mkdir(parents=True)
        tmp.mkdir()
        self.folders[name] = (cwd, tmp)
        runner = Processes(node, cwd=cwd)  # logs beside the folders, not in them
        runner.start(kind, PROCFILE[kind], self.environ(name, port, public_url))
        return runner

    def boot(self, with_release: bool) -> subprocess.Popen[bytes] | None:
        """Start two web and two worker processes (and ``release`` with them) on new folders."""
        self.boots += 1
        ports = [free_port(), free_port()]
        self.web_urls = [f"http://127.0.0.1:{port}" for port in ports]
        public_url = self.web_urls[0]  # upstream calls back the first web process
        self.nodes = {
            "web-a": self.start("web-a", "web", ports[0], public_url),
            "web-b": self.start("web-b", "web", ports[1], public_url),
            "worker-a": self.start("worker-a", "worker", free_port(), public_url),
            "worker-b": self.start("worker-b", "worker", free_port(), public_url),
        }
        release = None
        if with_release:
            release = self.start("release", "release", free_port(), public_url).running["release"]
        for url in self.web_urls:
            wait_until(
                lambda url=url: httpx.get(f"{url}/healthz").is_success,
                60,
                f"{url} up",
                self.alive,
            )
        return release

    def alive(self) -> None:
        for runner in self.nodes.values():
            runner.check()

    def apis(self) -> list[httpx.Client]:
        return [
            httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {API_TOKEN}"})
            for url in self.web_urls
        ]

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every process at once, as a platform does; return each one's exit status."""
        for runner in self.nodes.values():
            for process in runner.running.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
        statuses = {}
        for name, runner in self.nodes.items():
            [process] = runner.running.values()
            try:
                process.wait(STOP_SECONDS + 5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            statuses[name] = process.returncode
        return statuses

    def local_leftovers(self) -> list[str]:
        """Whatever any process left in its working directory or TMPDIR (there must be nothing)."""
        return [
            str(path)
            for cwd, tmp in self.folders.values()
            for folder in (cwd, tmp)
            for path in folder.rglob("*")
        ]


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server(separate_process=True) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def platform_sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(
        api_key=API_KEY,
        webhook_secret=WEBHOOK_SECRET,
        settings=SandboxSettings(pending_seconds=0.3, in_progress_seconds=0.3, seed=11),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def platform(
    tmp_path: Path,
    postgres_server: PostgresServer,
    s3: S3Server,
    platform_sandbox: SandboxServer,
) -> Iterator[Platform]:
    database_url = postgres_server.create_database(migrated=False)
    made = Platform(tmp_path, database_url, s3, platform_sandbox)
    try:
        yield made
    finally:
        made.stop()
        postgres_server.drop_database(database_url)


def submit(api: httpx.Client, n: int, parameters: dict[str, Any]) -> str:
    body = {
        "model": "sandbox/tiny",
        "prompt": f"shared nothing {n}",
        "duration": 2,
        "provider": {"options": {"sandbox": {"parameters": parameters}}},
    }
    response = api.post("/api/jobs", json=body, headers={"Idempotency-Key": f"platform-{n}"})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def settled(api: httpx.Client, ids: list[str]) -> bool:
    for job_id in ids:
        job = api.get(f"/api/jobs/{job_id}").json()
        if not job["settled"]:
            return False
    return True


def object_sha256(s3: S3Server, key: str) -> str:
    body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def check_video_redirect(api: httpx.Client, job: dict[str, Any], sandbox: SandboxServer) -> None:
    """The video endpoint redirects to a short-lived URL serving the same bytes, with Range."""
    output = job["outputs"][-1]
    answer = api.get(output["url"])
    assert answer.status_code == 307, answer.text
    location = answer.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert 0 < int(query["X-Amz-Expires"][0]) <= PRESIGN_LIMIT_SECONDS, location
    full = httpx.get(location)  # no Authorization: the URL is the credential
    assert full.status_code == 200
    assert hashlib.sha256(full.content).hexdigest() == output["sha256"]
    assert output["sha256"] == sandbox.expected_sha256(job["upstream_id"], output["index"])
    start, end = 1000, 5095
    part = httpx.get(location, headers={"Range": f"bytes={start}-{end}"})
    assert part.status_code == 206
    assert part.content == full.content[start : end + 1]
    assert part.headers["Content-Range"] == f"bytes {start}-{end}/{len(full.content)}"


def check_all(
    platform: Platform, apis: list[httpx.Client], jobs: dict[str, dict[str, Any]]
) -> None:
    """Every job completed, fetched once, stored whole in the bucket, served by both webs."""
    sandbox, s3 = platform.sandbox, platform.s3
    expected_keys = set()
    for job_id, parameters in jobs.items():
        seen = [api.get(f"/api/jobs/{job_id}").json() for api in apis]
        assert seen[0] == seen[1], "the two web processes disagree"
        job = seen[0]
        assert job["status"] == "completed", job
        assert job["completion_source"] == SOURCE[parameters["callback"]], job
        upstream = sandbox.job(job["upstream_id"])
        acknowledged = [a for a in upstream["callback_attempts"] if a.get("status") == 204]
        assert len(acknowledged) == CALLBACKS_ACKNOWLEDGED[parameters["callback"]], upstream
        outputs = parameters.get("outputs", 1)
        assert [o["index"] for o in job["outputs"]] == list(range(outputs)), job
        assert upstream["content_requests"] == {str(n): 1 for n in range(outputs)}, upstream
        for output, served in zip(job["outputs"], upstream["outputs"], strict=True):
            key = f"{PREFIX}/{job_id}/{output['index']}.mp4"
            expected_keys.add(key)
            assert output["status"] == "downloaded", job
            assert output["bytes"] == served["bytes"]
            assert object_sha256(s3, key) == output["sha256"] == served["sha256"], key
        check_video_redirect(apis[len(expected_keys) % 2], job, sandbox)
    assert set(s3.objects(BUCKET)) == expected_keys
    assert s3.uploads(BUCKET) == [], "an incomplete multipart upload was left behind"
    for api in apis:
        listed = api.get("/api/jobs", params={"limit": 100}).json()["jobs"]
        assert {job["id"] for job in listed} == set(jobs)


def connections(database_url: str) -> int:
    """Connections the service's processes hold on the database (not counting this one)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def migrations_applied(database_url: str) -> list[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def test_two_webs_and_two_workers_sharing_nothing_lose_nothing_across_a_restart(platform):
    release = platform.boot(with_release=True)
    assert release is not None
    wait_until(lambda: release.poll() is not None, 60, "release finished", platform.alive)
    assert release.returncode == 0, (
        platform.home / "boot-1" / "release" / "release.log"
    ).read_text()
    assert migrations_applied(platform.database_url) == sorted(name for name, _ in MIGRATIONS)

    jobs: dict[str, dict[str, Any]] = {}
    apis = platform.apis()
    for n, parameters in enumerate(JOBS):
        jobs[submit(apis[n % 2], n, parameters)] = parameters
    wait_until(lambda: settled(apis[1], list(jobs)), 90, "every job settled", platform.alive)
    check_all(platform, apis, jobs)
    # The README's budget: each gunicorn worker a pool, each worker a pool and a listener.
    held = connections(platform.database_url)
    budget = 2 * WEB_CONCURRENCY * DEFAULT_POOL_SIZE + 2 * (DEFAULT_POOL_SIZE + 1)
    assert 0 < held <= budget, held

    for api in apis:
        api.close()
    statuses = platform.stop()
    assert statuses == dict.fromkeys(statuses, 0), statuses
    assert platform.local_leftovers() == []

    platform.boot(with_release=False)
    apis = platform.apis()
    check_all(platform, apis, jobs)  # nothing lost, nothing fetched again
    parameters = {"callback": "duplicate", "outputs": 2, "content_size": 300_007}
    new_job = submit(apis[1], len(JOBS), parameters)
    jobs[new_job] = parameters
    wait_until(lambda: settled(apis[0], [new_job]), 60, "the new job settled", platform.alive)
    check_all(platform, apis, jobs)

    for api in apis:
        api.close()
    statuses = platform.stop()
    assert statuses == dict.fromkeys(statuses, 0), statuses
    assert platform.local_leftovers() == []
