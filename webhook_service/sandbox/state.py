"""Everything the sandbox remembers, behind one lock: clock, jobs, faults, stats, randomness.

The sandbox clock is ``time.time() + offset``; ``advance`` only ever moves it
forward, and wakes the callback dispatcher through ``wakeup`` so jobs that just
became terminal are called back at once.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

from .jobs import Job
from .settings import SandboxSettings
from .validation import Submission

ENDPOINTS = ("submit", "poll", "content", "models")
MAX_HANG_SECONDS = 600.0
STAT_KEYS = (
    "submits",
    "polls",
    "content_requests",
    "models",
    "unauthorized",
    "injected_errors",
    "hung_requests",
    "truncated_downloads",
    "callbacks_sent",
    "callbacks_dropped",
    "callbacks_failed",
    "callbacks_duplicated",
    "callback_attempts",
)


@dataclass
class Fault:
    """A scripted answer for the next ``count`` requests to one endpoint.

    A ``status`` below 400 (or none) answers normally, after ``hang_seconds`` and cut
    at ``truncate_at`` body bytes; ``after_create`` makes a submit create the job first.
    """

    endpoint: str
    status: int | None = None
    count: int = 1
    retry_after: int | None = None
    after_create: bool = False
    hang_seconds: float = 0.0
    truncate_at: int | None = None

    @property
    def is_error(self) -> bool:
        """Return True when the fault answers with an error status."""
        return self.status is not None and self.status >= 400


def make_fault(**options: Any) -> Fault:
    """Return a checked Fault; raise ValueError naming the bad field."""
    try:
        fault = Fault(**options)
    except TypeError as error:
        raise ValueError(f"bad fault: {error}") from None
    if fault.endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
    ints = (("status", 100, 599), ("count", 1, 10**6), ("retry_after", 0, 86400))
    for name, low, high in ints:
        value = getattr(fault, name)
        if value is not None and (not _is_int(value) or not low <= value <= high):
            raise ValueError(f"{name} must be an integer from {low} to {high}")
    hang = fault.hang_seconds
    if (
        not isinstance(hang, int | float)
        or isinstance(hang, bool)
        or not (0 <= hang <= MAX_HANG_SECONDS)
    ):
        raise ValueError(f"hang_seconds must be a number from 0 to {MAX_HANG_SECONDS:g}")
    if fault.truncate_at is not None and (
        fault.endpoint != "content" or not _is_int(fault.truncate_at) or fault.truncate_at < 0
    ):
        raise ValueError("truncate_at must be an integer >= 0, for the content endpoint only")
    if fault.after_create and (fault.endpoint != "submit" or not fault.is_error):
        raise ValueError("after_create needs endpoint 'submit' and an error status")
    if not (fault.is_error or fault.hang_seconds or fault.truncate_at is not None):
        raise ValueError("a fault needs an error status, hang_seconds or truncate_at")
    return fault


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SandboxState:
    """The sandbox's memory; every method is thread-safe."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._initial = settings.as_dict()
        self.lock = threading.RLock()
        self.wakeup = threading.Condition(self.lock)
        self.offset = 0.0
        self.jobs: dict[str, Job] = {}
        self.faults: dict[str, deque[Fault]] = {name: deque() for name in ENDPOINTS}
        self.counters: Counter[str] = Counter()
        self.rng = random.Random(settings.seed)
        self._due: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    def now(self) -> float:
        """Return the sandbox clock: wall time plus every ``advance``."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` and return the new time."""
        if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
            raise ValueError("seconds must be a finite number >= 0")
        with self.wakeup:
            self.offset += seconds
            self.wakeup.notify_all()
            return self.now()

    def chance(self, share: float) -> bool:
        """Return True with probability ``share`` (no draw when it is 0)."""
        with self.lock:
            return share > 0 and self.rng.random() < share

    def pick(self, options: list[Any]) -> Any:
        """Return one of ``options`` at random."""
        with self.lock:
            return self.rng.choice(options)

    def shuffle(self, items: list[Any]) -> None:
        """Shuffle ``items`` in place with the sandbox's random source."""
        with self.lock:
            self.rng.shuffle(items)

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name``."""
        with self.lock:
            self.counters[name] += amount

    def update_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply a partial settings update (reseeding on ``seed``); return all settings."""
        with self.wakeup:
            self.settings.update(changes)
            if "seed" in changes:
                self.rng.seed(self.settings.seed)
            self.wakeup.notify_all()
            return self.settings.as_dict()

    def reset(self) -> None:
        """Forget jobs, faults, stats and clock moves; restore the starting settings."""
        with self.wakeup:
            self.jobs.clear()
            for queue in self.faults.values():
                queue.clear()
            self.counters.clear()
            self.offset = 0.0
            self._due.clear()
            for name, value in self._initial.items():
                setattr(self.settings, name, list(value) if isinstance(value, list) else value)
            self.rng.seed(self.settings.seed)
            self.wakeup.notify_all()

    def create_job(self, submission: Submission) -> Job:
        """Store a new job for ``submission`` and schedule its callback."""
        overrides = submission.overrides
        with self.wakeup:
            settings = self.settings
            mode = overrides.get("callback")
            if mode is None:
                mode = "deliver"
                if self.chance(settings.drop_callbacks):
                    mode = "drop"
                elif self.chance(settings.duplicate_callbacks):
                    mode = "duplicate"
            job = Job(
                id=f"job-{self.rng.getrandbits(64):016x}",
                generation_id=f"gen-{self.rng.getrandbits(64):016x}",
                model=submission.model,
                params=submission.body,
                created_at=self.now(),
                pending_seconds=float(overrides.get("pending_seconds", settings.pending_seconds)),
                in_progress_seconds=float(
                    overrides.get("in_progress_seconds", settings.in_progress_seconds)
                ),
                outcome=overrides.get("outcome", "completed"),
                outputs=overrides.get("outputs", 1),
                content_size=overrides.get("content_size", settings.content_size),
                callback_url=submission.callback_url,
                callback_mode=mode,
                callback_state="waiting" if submission.callback_url else "none",
            )
            self.jobs[job.id] = job
            if job.callback_url:
                heapq.heappush(self._due, (job.terminal_at, next(self._order), job.id))
                self.wakeup.notify_all()
            return job

    def job(self, job_id: str) -> Job:
        """Return the job called ``job_id`` (KeyError if unknown)."""
        with self.lock:
            return self.jobs[job_id]

    def count_content(self, job_id: str, index: str) -> None:
        """Count one content request for output ``index`` of a known job."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None:
                job.content_requests[index] = job.content_requests.get(index, 0) + 1

    def add_fault(self, **options: Any) -> Fault:
        """Queue a checked fault (see ``Fault``) and return it."""
        fault = make_fault(**options)
        with self.lock:
            self.faults[fault.endpoint].append(fault)
        return fault

    def take_fault(self, endpoint: str) -> Fault | None:
        """Consume one use of the oldest fault queued for ``endpoint``."""
        with self.lock:
            queue = self.faults[endpoint]
            if not queue:
                return None
            fault = queue[0]
            fault.count -= 1
            if fault.count <= 0:
                queue.popleft()
            return Fault(**{**asdict(fault), "count": 1})

    def queued_faults(self) -> list[dict[str, Any]]:
        """Return the faults still queued, oldest first per endpoint."""
        with self.lock:
            return [asdict(fault) for queue in self.faults.values() for fault in queue]

    def pop_due_callbacks(self) -> list[Job]:
        """Remove and return the jobs whose callback is due now."""
        with self.lock:
            limit = self.now() - self.settings.callback_delay_seconds
            due = []
            while self._due and self._due[0][0] <= limit:
                job = self.jobs.get(heapq.heappop(self._due)[2])
                if job is not None:
                    due.append(job)
            return due

    def seconds_until_next_callback(self) -> float | None:
        """Return how long until the next callback falls due, or None when none waits."""
        with self.lock:
            if not self._due:
                return None
            return self._due[0][0] + self.settings.callback_delay_seconds - self.now()

    def stats(self) -> dict[str, Any]:
        """Return every counter, the job count and content requests per job and output."""
        with self.lock:
            view: dict[str, Any] = {key: self.counters[key] for key in STAT_KEYS}
            view["jobs"] = len(self.jobs)
            view["content_requests_by_output"] = {
                job.id: dict(job.content_requests)
                for job in self.jobs.values()
                if job.content_requests
            }
            return view
