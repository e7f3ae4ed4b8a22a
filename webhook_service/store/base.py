"""The state store's interface: what the domain may ask of any database engine.

Each engine implements `Store` in its own module (`sqlite.py`, `postgres.py`)
and keeps all of its SQL there.  Rows come back as plain dicts with the same
keys on every engine; times are Unix seconds (floats); JSON columns are text.

Errors: an engine raises `StoreUnavailable` when the database cannot be reached
or written (locked past its timeout, connection lost, disk failure); callers
answer 503 or retry.  Any other exception is a bug.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

T = TypeVar("T")
Row = dict[str, Any]


def where(conditions: Iterable[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause and its parameters from (SQL condition, value) pairs.

    A pair whose value is None is left out; each condition holds one placeholder in
    the engine's own spelling (``status = ?``, ``seq < %s``).
    """
    kept = [(condition, value) for condition, value in conditions if value is not None]
    clause = " AND ".join(condition for condition, _ in kept)
    return (f"WHERE {clause}" if kept else ""), [value for _, value in kept]


class StoreUnavailable(Exception):
    """The database cannot be reached or written right now."""


class Store(ABC):
    """All persistence of jobs, outputs and webhook events."""

    @abstractmethod
    def describe(self) -> str:
        """Say which database this is, for people (never a password)."""

    @abstractmethod
    def close(self) -> None:
        """Give back this store's connection(s)."""

    @abstractmethod
    def migrate(self) -> list[str]:
        """Apply pending migrations (safe when several processes start at once)."""

    @abstractmethod
    def ping(self) -> bool:
        """Answer whether the database is reachable and migrated."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Store]:
        """A block whose reads and writes commit together; nested: a savepoint."""

    @abstractmethod
    def batched(self, work: Callable[[Store], T]) -> T:
        """Run a short write, committed before returning (engines may share commits)."""

    # Jobs ---------------------------------------------------------------

    @abstractmethod
    def insert_job(self, job: Mapping[str, Any]) -> None:
        """Insert a new job row (params given as a dict)."""

    @abstractmethod
    def job(self, job_id: str) -> Row | None:
        """Return the job with our id, or None."""

    @abstractmethod
    def job_by_idempotency_key(self, client: str, key: str) -> Row | None:
        """Return the job a client submitted under an Idempotency-Key."""

    @abstractmethod
    def jobs_for_event(self, token: str | None, upstream_id: str) -> tuple[Row | None, Row | None]:
        """Return (the job with this callback token, the job with this upstream id)."""

    @abstractmethod
    def update_job(self, job_id: str, changes: Mapping[str, Any]) -> None:
        """Set columns of one job."""

    @abstractmethod
    def list_jobs(self, status: str | None, limit: int, before_seq: int | None) -> list[Row]:
        """Return jobs newest first, optionally filtered, older than ``before_seq``."""

    @abstractmethod
    def count_jobs_by_status(self) -> dict[str, int]:
        """Return how many jobs are in each status."""

    # Outputs ------------------------------------------------------------

    @abstractmethod
    def create_outputs(self, job_id: str, count: int, now: float) -> None:
        """Create output rows 0..count-1 for a job, due for download now."""

    @abstractmethod
    def outputs(self, job_ids: Iterable[str]) -> dict[str, list[Row]]:
        """Return each job's outputs by index, for many jobs in one query."""

    @abstractmethod
    def output(self, job_id: str, index: int) -> Row | None:
        """Return one output row."""

    @abstractmethod
    def update_output(
        self, job_id: str, index: int, changes: Mapping[str, Any], fence: int | None = None
    ) -> bool:
        """Set columns of one output; with ``fence``, only if that claim still holds."""

    # Webhook events -------------------------------------------------------

    @abstractmethod
    def insert_event(self, event: Mapping[str, Any]) -> int | None:
        """Store an event; return its id, or None when its dedup key is already stored."""

    @abstractmethod
    def update_event(self, event_id: int, changes: Mapping[str, Any]) -> None:
        """Set columns of one stored event."""

    @abstractmethod
    def event(self, event_id: int) -> Row | None:
        """Return one stored event."""

    @abstractmethod
    def waiting_events(self, upstream_id: str | None, token: str) -> list[Row]:
        """Return events kept for a job that did not exist (or had no upstream id) yet."""

    @abstractmethod
    def list_events(
        self,
        verdict: str | None = None,
        job_id: str | None = None,
        upstream_id: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[Row]:
        """Return stored events newest first, filtered."""

    @abstractmethod
    def count_events(self) -> int:
        """Return how many events are stored."""

    # Notifications ------------------------------------------------------------

    @abstractmethod
    def insert_notification(self, notification: Mapping[str, Any]) -> bool:
        """Queue a job's notification; False when the job already has one."""

    @abstractmethod
    def notifications(self, job_ids: Iterable[str]) -> dict[str, Row]:
        """Return the notifications of many jobs, by job id."""

    @abstractmethod
    def list_notifications(
        self, status: str | None = None, job_id: str | None = None, limit: int = 50
    ) -> list[Row]:
        """Return notifications newest first, filtered."""

    @abstractmethod
    def begin_notification_attempt(
        self, job_id: str, fence: int, attempt: int, owner: str, now: float
    ) -> bool:
        """Record that attempt ``attempt`` goes out now; False if the claim was lost or
        that attempt was already made (no attempt is ever sent twice)."""

    @abstractmethod
    def end_notification_attempt(
        self, job_id: str, attempt: int, changes: Mapping[str, Any]
    ) -> None:
        """Record how an attempt ended (``finished_at``, ``status_code``, ``error``)."""

    @abstractmethod
    def notification_attempts(self, job_id: str) -> list[Row]:
        """Return a job's notification attempts, oldest first."""

    @abstractmethod
    def resend_notification(self, job_id: str, now: float) -> bool:
        """Make a job's notification due again now, with a fresh retry schedule."""

    # Work claiming (worker) ---------------------------------------------------

    @abstractmethod
    def claim_due_jobs(self, owner: str, now: float, until: float, limit: int) -> list[Row]:
        """Lease up to ``limit`` jobs whose poll is due; each claim bumps the job's fence."""

    @abstractmethod
    def claim_due_outputs(self, owner: str, now: float, until: float, limit: int) -> list[Row]:
        """Lease up to ``limit`` outputs whose download is due; each claim bumps the fence."""

    @abstractmethod
    def claim_due_notifications(
        self, owner: str, now: float, until: float, limit: int
    ) -> list[Row]:
        """Lease up to ``limit`` notifications whose next attempt is due."""

    @abstractmethod
    def finish_notification_claim(
        self, job_id: str, fence: int, changes: Mapping[str, Any]
    ) -> bool:
        """Release a delivery claim, setting ``changes``; False when the claim was lost."""

    @abstractmethod
    def renew_job_lease(self, job_id: str, fence: int, until: float) -> bool:
        """Extend a poll's lease; False when a newer claim took it over."""

    @abstractmethod
    def renew_output_lease(self, job_id: str, index: int, fence: int, until: float) -> bool:
        """Extend a download's lease; False when a newer claim took it over."""

    @abstractmethod
    def finish_job_claim(self, job_id: str, fence: int, changes: Mapping[str, Any]) -> bool:
        """Release a poll claim, setting ``changes``; False when the claim was lost."""

    @abstractmethod
    def finish_output_claim(
        self, job_id: str, index: int, fence: int, changes: Mapping[str, Any]
    ) -> bool:
        """Release a download claim, setting ``changes``; False when the claim was lost."""

    @abstractmethod
    def release_claims(self, owner: str) -> None:
        """Give up every claim ``owner`` holds, so other workers can take the work at once."""

    @abstractmethod
    def wait_for_change(self, timeout: float, stop: Callable[[], bool]) -> bool:
        """Wait until someone may have committed new work, ``timeout`` passes or ``stop()``.

        Return True when woken by a change.  A latency optimisation only: callers
        still look for due work on a timer, so a missed wake-up costs a round's delay.
        """

    @abstractmethod
    def next_due_at(self) -> float | None:
        """Return the earliest time any poll, download or notification is due."""

    # Observability (read-only) ------------------------------------------------------

    @abstractmethod
    def metrics(self, now: float, lag_buckets: tuple[float, ...]) -> Row:
        """Return the counters and gauges ``/metrics`` exposes, read at once.

        Keys: ``callbacks`` {verdict: n}; ``jobs_finished`` [{model, status, source,
        count}] (source ``callback``/``poll``, ``submit`` when no upstream answer ended
        it); ``lag`` {``buckets``: [n with lag ≤ each bound], ``count``, ``sum``};
        ``downloads`` {``downloaded``, ``failed``, ``error``} (``error``: failed attempts);
        ``download_bytes``; ``notifications`` {``delivered``, ``failed``} (attempts);
        ``due`` {``polls``, ``downloads``, ``notifications``} (due now, not claimed).
        """

    @abstractmethod
    def callback_lag_by_model(self) -> list[Row]:
        """Return per model: ``model``, ``callbacks``, ``avg_lag``, ``max_lag`` (seconds)."""

    @abstractmethod
    def oldest_work(self, now: float) -> Row:
        """Return ``job`` (oldest unfinished job), ``output`` (oldest output not yet
        downloaded or failed), ``notification`` (oldest pending), each a row or None,
        and ``last_callback_at`` (latest event received, or None)."""
