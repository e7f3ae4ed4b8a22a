"""One sandbox job: its status on the sandbox clock and the views of it.

The status is derived, never stored: ``pending`` until ``created_at +
pending_seconds``, then ``in_progress`` for ``in_progress_seconds``, then the
job's outcome.  The poll answer, the callback body and the admin view all read
the same ``Job`` through the functions below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .content import Output

API_PREFIX = "/api/v1"
TERMINAL = ("completed", "failed", "cancelled", "expired")
RETENTION_SECONDS = 3600
USAGE = {"cost": 0.5, "is_byok": False}
ERRORS = {
    "failed": "sandbox: the provider failed to generate the video",
    "cancelled": "sandbox: the generation was cancelled",
    "expired": "sandbox: the job expired before its outputs were fetched",
}


@dataclass
class Job:
    """A submitted job; times are on the sandbox clock (Unix seconds)."""

    id: str
    generation_id: str
    model: str
    params: dict[str, Any]
    created_at: float
    pending_seconds: float
    in_progress_seconds: float
    outcome: str
    outputs: int
    content_size: int
    callback_url: str | None
    callback_mode: str
    callback_state: str = "none"
    callback_attempts: list[dict[str, Any]] = field(default_factory=list)
    content_requests: dict[str, int] = field(default_factory=dict)

    @property
    def terminal_at(self) -> float:
        """Return when the job reaches its outcome."""
        return self.created_at + self.pending_seconds + self.in_progress_seconds

    @property
    def expires_at(self) -> float:
        """Return when a completed job's outputs stop being downloadable."""
        return self.terminal_at + RETENTION_SECONDS

    def status(self, now: float) -> str:
        """Return the job's status at sandbox time ``now``."""
        if now < self.created_at + self.pending_seconds:
            return "pending"
        if now < self.terminal_at:
            return "in_progress"
        return self.outcome

    def output(self, index: int) -> Output:
        """Return output ``index`` (IndexError when the job has no such output)."""
        if not 0 <= index < self.outputs:
            raise IndexError(f"job {self.id} has no output {index}")
        return Output(self.id, index, self.content_size)

    def content_urls(self, base_url: str) -> list[str]:
        """Return the absolute content URL of every output."""
        return [f"{base_url}/videos/{self.id}/content?index={n}" for n in range(self.outputs)]


def iso(timestamp: float) -> str:
    """Return ``timestamp`` as ISO-8601 UTC with milliseconds and a ``Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public_view(job: Job, now: float, base_url: str) -> dict[str, Any]:
    """Return the job as ``GET /videos/{id}`` answers it."""
    status = job.status(now)
    view: dict[str, Any] = {
        "id": job.id,
        "polling_url": f"{API_PREFIX}/videos/{job.id}",
        "status": status,
        "generation_id": job.generation_id,
    }
    if status == "completed":
        view["unsigned_urls"] = job.content_urls(base_url)
        view["usage"] = dict(USAGE)
        view["expires_at"] = int(job.expires_at)
    elif status in ERRORS:
        view["error"] = ERRORS[status]
    return view


def callback_event(job: Job, base_url: str) -> dict[str, Any]:
    """Return the callback envelope for the job's terminal state."""
    data: dict[str, Any] = {
        "id": job.id,
        "status": job.outcome,
        "generation_id": job.generation_id,
        "model": job.model,
    }
    if job.outcome == "completed":
        data["unsigned_urls"] = job.content_urls(base_url)
        data["usage"] = dict(USAGE)
    else:
        data["error"] = ERRORS[job.outcome]
    return {
        "type": f"video.generation.{job.outcome}",
        "created_at": iso(job.terminal_at),
        "data": data,
    }


def admin_view(job: Job, now: float, base_url: str, with_sha256: bool) -> dict[str, Any]:
    """Return everything the sandbox knows about the job (``with_sha256`` hashes outputs)."""
    urls = job.content_urls(base_url)
    outputs = []
    for n in range(job.outputs):
        output = job.output(n)
        entry: dict[str, Any] = {
            "index": n,
            "bytes": output.size,
            "url": urls[n],
            "requests": job.content_requests.get(str(n), 0),
        }
        if with_sha256:
            entry["sha256"] = output.sha256()
        outputs.append(entry)
    return {
        "id": job.id,
        "generation_id": job.generation_id,
        "model": job.model,
        "status": job.status(now),
        "outcome": job.outcome,
        "created_at": iso(job.created_at),
        "terminal_at": iso(job.terminal_at),
        "params": job.params,
        "callback_url": job.callback_url,
        "callback_mode": job.callback_mode,
        "callback_state": job.callback_state,
        "callback_attempts": list(job.callback_attempts),
        "content_size": job.content_size,
        "outputs": outputs,
        "content_requests": dict(job.content_requests),
        "job_object": public_view(job, now, base_url),
    }
