"""The sandbox's memory: settings, jobs on a movable clock, content, faults, stats."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from typing import Any

BLOCK_SIZE = 1024 * 1024
TERMINAL = ("completed", "failed", "cancelled", "expired")


@dataclass
class SandboxSettings:
    """Runtime knobs; change them live through POST /_sandbox/settings."""

    pending_seconds: float = 0.5
    in_progress_seconds: float = 0.5
    content_size: int = 0  # 0: the sample MP4; else deterministic bytes of this size
    error_rate: float = 0.0
    error_statuses: list[int] = field(default_factory=lambda: [429, 500])
    retry_after: int = 1
    drop_callbacks: float = 0.0
    duplicate_callbacks: float = 0.0
    callback_delay_seconds: float = 0.0
    reorder_callbacks: bool = False
    truncate_downloads: float = 0.0
    range_support: str = "206"  # "206" or "ignore"
    callback_attempts: int = 3
    ca_file: str | None = None
    require_https_callbacks: bool = False
    throttle_bytes_per_second: int = 0  # 0: as fast as possible
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update, refusing unknown knobs."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            setattr(self, name, value)


@lru_cache(maxsize=1)
def sample_mp4() -> bytes:
    """The small real MP4 every job serves when no content size is set."""
    return resources.files(__package__).joinpath("sample.mp4").read_bytes()


@lru_cache(maxsize=64)
def _block(job_id: str, index: int) -> bytes:
    seed = hashlib.sha256(f"{job_id}/{index}".encode()).digest()
    return (seed * (BLOCK_SIZE // len(seed) + 1))[:BLOCK_SIZE]


class Content:
    """The bytes of one output: the sample MP4 or a repeated pseudo-random block."""

    def __init__(self, job_id: str, index: int, size: int) -> None:
        self.job_id, self.index, self.requested = job_id, index, size
        self.size = size or len(sample_mp4())

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Yield the bytes [start, end)."""
        if not self.requested:
            yield sample_mp4()[start:end]
            return
        block = _block(self.job_id, self.index)
        position = start
        while position < end:
            offset = position % BLOCK_SIZE
            piece = block[offset : offset + min(BLOCK_SIZE - offset, end - position)]
            yield piece
            position += len(piece)

    @property
    def sha256(self) -> str:
        """The digest of the whole content."""
        return _sha256(self.job_id, self.index, self.requested)


@lru_cache(maxsize=256)
def _sha256(job_id: str, index: int, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in Content(job_id, index, size).chunks(0, size or len(sample_mp4())):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Job:
    """One generation job."""

    id: str
    model: str
    params: dict[str, Any]
    created: float
    callback_url: str | None
    outcome: str = "completed"
    outputs: int = 1
    callback: str = "deliver"
    content_size: int | None = None
    pending_seconds: float | None = None
    in_progress_seconds: float | None = None
    generation_id: str = field(default_factory=lambda: "gen-" + secrets.token_hex(8))
    callback_attempts: list[dict[str, Any]] = field(default_factory=list)
    content_requests: Counter[int] = field(default_factory=Counter)
    callback_scheduled: bool = False


class State:
    """Everything the sandbox knows, behind one lock."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.offset = 0.0
        self.faults: dict[str, deque[dict[str, Any]]] = {}
        self.stats: Counter[str] = Counter()
        self.random = random.Random(settings.seed)

    def now(self) -> float:
        """The sandbox clock: wall time plus whatever `advance` added."""
        return time.time() + self.offset

    def status(self, job: Job) -> str:
        """Where ``job`` is on the sandbox clock."""
        pending = job.pending_seconds
        running = job.in_progress_seconds
        pending = self.settings.pending_seconds if pending is None else pending
        running = self.settings.in_progress_seconds if running is None else running
        age = self.now() - job.created
        if age < pending:
            return "pending"
        if age < pending + running:
            return "in_progress"
        return job.outcome

    def finishes_at(self, job: Job) -> float:
        """Sandbox-clock time at which the job becomes terminal."""
        pending = (
            self.settings.pending_seconds if job.pending_seconds is None else job.pending_seconds
        )
        running = (
            self.settings.in_progress_seconds
            if job.in_progress_seconds is None
            else job.in_progress_seconds
        )
        return job.created + pending + running

    def content(self, job: Job, index: int) -> Content:
        """The content of output ``index``."""
        size = self.settings.content_size if job.content_size is None else job.content_size
        return Content(job.id, index, size)

    def chance(self, share: float) -> bool:
        """True with probability ``share``."""
        with self.lock:
            return share > 0 and self.random.random() < share

    def add_fault(self, endpoint: str, status: int, count: int = 1, **options: Any) -> None:
        """Queue ``count`` scripted answers for one endpoint."""
        if endpoint not in ("submit", "poll", "content", "models"):
            raise ValueError(f"unknown endpoint {endpoint!r}")
        with self.lock:
            queue = self.faults.setdefault(endpoint, deque())
            for _ in range(count):
                queue.append({"status": status, **options})

    def take_fault(self, endpoint: str) -> dict[str, Any] | None:
        """Pop the next scripted answer for an endpoint, if any."""
        with self.lock:
            queue = self.faults.get(endpoint)
            return queue.popleft() if queue else None

    def view(self, job: Job, base_url: str) -> dict[str, Any]:
        """The admin view of a job, with what it serves."""
        status = self.status(job)
        return {
            "id": job.id,
            "status": status,
            "model": job.model,
            "params": job.params,
            "callback_url": job.callback_url,
            "outcome": job.outcome,
            "outputs": [
                {
                    "index": n,
                    "bytes": self.content(job, n).size,
                    "sha256": self.content(job, n).sha256,
                }
                for n in range(job.outputs)
            ],
            "callback_attempts": list(job.callback_attempts),
            "content_requests": {str(k): v for k, v in job.content_requests.items()},
            "job_object": job_object(job, status, base_url),
        }

    def settings_dict(self) -> dict[str, Any]:
        """The settings as JSON."""
        return asdict(self.settings)


def job_object(job: Job, status: str, base_url: str) -> dict[str, Any]:
    """The job as `GET /videos/{id}` returns it."""
    answer: dict[str, Any] = {
        "id": job.id,
        "polling_url": f"/api/v1/videos/{job.id}",
        "status": status,
        "generation_id": job.generation_id,
    }
    if status == "completed":
        answer["unsigned_urls"] = [
            f"{base_url}/videos/{job.id}/content?index={n}" for n in range(job.outputs)
        ]
        answer["usage"] = {"cost": 0.5, "is_byok": False}
    elif status in TERMINAL:
        answer["error"] = f"sandbox: the job {status}"
    return answer
