"""The job state machine: the one place a job's status changes.

A callback, a poll and a submit answer all become an `Observation` of what
upstream says about a job.  `transition` (pure) decides what that observation
changes; `apply_observation` writes it through the store.  Statuses only move
forward (`submitting → pending → in_progress → terminal`); terminal statuses never
change again.  The one late addition allowed is learning a completed job's
outputs when the completing event did not list them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .job_json import job_json
from .notifications.events import build_event
from .store import Store

log = logging.getLogger(__name__)

SUBMITTING = "submitting"
PENDING = "pending"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
SUBMIT_FAILED = "submit_failed"
UPSTREAM_TERMINAL = frozenset({COMPLETED, "failed", "cancelled", "expired"})
TERMINAL = UPSTREAM_TERMINAL | {SUBMIT_FAILED}
STATUSES = (SUBMITTING, PENDING, IN_PROGRESS, *sorted(TERMINAL))
_RANK = {SUBMITTING: 0, PENDING: 1, IN_PROGRESS: 2}
MAX_COST = 1e12  # dollars; anything larger is a broken value, not a price


@dataclass(frozen=True)
class Observation:
    """What upstream said about a job, through one channel."""

    status: str
    source: str  # "callback" | "poll" | "submit"
    upstream_id: str | None = None
    generation_id: str | None = None
    cost: float | None = None
    error: str | None = None
    output_count: int | None = None  # len(unsigned_urls), when upstream listed them

    @classmethod
    def from_upstream(cls, data: Mapping[str, Any], source: str) -> Observation:
        """Read a job object (poll answer, or a callback's ``data``) defensively."""
        usage = data.get("usage")
        cost = usage.get("cost") if isinstance(usage, Mapping) else None
        urls = data.get("unsigned_urls")
        error = data.get("error")
        if isinstance(error, Mapping):
            error = error.get("message")
        generation_id = data.get("generation_id")
        return cls(
            status=str(data.get("status") or ""),
            source=source,
            upstream_id=_text(data["id"]) if data.get("id") else None,
            generation_id=_text(generation_id) if generation_id else None,
            cost=usable_cost(cost),
            error=_text(error) if error else None,
            output_count=len(urls) if isinstance(urls, list) else None,
        )


def _text(value: Any) -> str:
    """``value`` as text any database engine stores: no lone surrogate, no NUL."""
    text = str(value).replace("\x00", "\ufffd")
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def usable_cost(value: Any) -> float | None:
    """Return an upstream cost as a finite float, or None when it is not a usable number.

    Upstream bodies may carry ``NaN``, ``1e999`` or ``10**400``; none may reach the
    database, whose values end up in strict JSON answers.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and abs(number) <= MAX_COST else None


@dataclass(frozen=True)
class Transition:
    """The changes one observation makes to a job."""

    changes: dict[str, Any] = field(default_factory=dict)
    new_outputs: int = 0  # output rows to create, indexes 0..n-1


def is_terminal(status: str) -> bool:
    """Answer whether a job status can never change again."""
    return status in TERMINAL


def transition(job: Mapping[str, Any], seen: Observation, now: float) -> Transition | None:
    """Decide what ``seen`` changes on ``job``; None when it changes nothing."""
    status = job["status"]
    if status in TERMINAL:
        if (
            status == COMPLETED
            and not job["outputs_known"]
            and seen.status == COMPLETED
            and seen.output_count is not None
        ):
            return Transition(
                {"outputs_known": 1, "next_poll_at": None, "updated_at": now}, seen.output_count
            )
        if status == SUBMIT_FAILED and seen.upstream_id and not job["upstream_id"]:
            # Upstream did create (and charge for) the job after all: its status stays,
            # but its id is kept, never lost, so the job can be found upstream.
            note = f"; ModelGates did create it, as {seen.upstream_id}"
            return Transition(
                {
                    "upstream_id": seen.upstream_id,
                    "error": (job["error"] or "") + note,
                    "updated_at": now,
                }
            )
        return None

    changes: dict[str, Any] = {}
    new_outputs = 0
    if seen.upstream_id and not job["upstream_id"]:
        # The upstream id settles a submit whose answer we never saw.
        changes.update(upstream_id=seen.upstream_id, submit_outcome="accepted", error=None)
    if seen.generation_id and not job["generation_id"]:
        changes["generation_id"] = seen.generation_id
    if seen.cost is not None and job["cost"] is None:
        changes["cost"] = seen.cost

    if seen.status in UPSTREAM_TERMINAL:
        changes.update(
            status=seen.status,
            finished_at=now,
            next_poll_at=None,
            completion_source=seen.source if seen.source != "submit" else None,
        )
        if seen.status == COMPLETED:
            if seen.output_count is None:
                changes["next_poll_at"] = now  # poll to learn the outputs
            else:
                changes["outputs_known"] = 1
                new_outputs = seen.output_count
        else:
            changes["error"] = seen.error or f"ModelGates reported the job {seen.status}"
    elif _RANK.get(seen.status, -1) > _RANK[status]:
        changes["status"] = seen.status

    if not changes:
        return None
    changes["updated_at"] = now
    return Transition(changes, new_outputs)


def apply_observation(
    store: Store, job: Mapping[str, Any], seen: Observation, now: float
) -> Transition | None:
    """Apply ``seen`` to ``job`` through the store; call inside a store transaction."""
    change = transition(job, seen, now)
    if change is None:
        return None
    store.update_job(job["id"], change.changes)
    if "status" in change.changes:
        log.info(
            "job %s: %s -> %s (by %s)",
            job["id"],
            job["status"],
            change.changes["status"],
            seen.source,
            extra={"job_id": job["id"], "status": change.changes["status"], "by": seen.source},
        )
    if change.new_outputs:
        store.create_outputs(job["id"], change.new_outputs, now)
    if job["notify_url"] and is_terminal(change.changes.get("status", job["status"])):
        queue_notification(store, job["id"], now)
    return change


def is_settled(job: Mapping[str, Any], outputs: Sequence[Mapping[str, Any]]) -> bool:
    """Answer whether nothing about the job will change any more.

    A terminal job is settled, except a completed one whose outputs are not all
    ``downloaded`` or ``failed`` yet (or not even known yet).
    """
    if not upstream_done(job):
        return False
    return all(output["status"] in ("downloaded", "failed") for output in outputs)


def upstream_done(job: Mapping[str, Any]) -> bool:
    """Answer whether upstream has nothing more to tell: terminal, outputs known."""
    return job["status"] in TERMINAL and (job["status"] != COMPLETED or bool(job["outputs_known"]))


def queue_notification(store: Store, job_id: str, now: float) -> bool:
    """Queue the job's one notification if it asked for one and is settled now.

    Call inside the transaction that made the change: whichever road settled the
    job (callback, poll, the last download, the submit watchdog) queues it, once.
    """
    job = store.job(job_id)
    if job is None or not job["notify_url"]:
        return False
    outputs = store.outputs([job_id])[job_id]
    if not is_settled(job, outputs) or store.notifications([job_id]):
        return False
    pending = {"status": "pending", "sent": 0, "last_status": None, "last_error": None}
    webhook_id, body = build_event(job_json(job, outputs, pending, settled=True), now)
    return store.insert_notification(
        {
            "job_id": job_id,
            "url": job["notify_url"],
            "webhook_id": webhook_id,
            "event_type": f"job.{job['status']}",
            "body": body,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
    )


def fail_submission(error: str, now: float) -> dict[str, Any]:
    """Return the changes that end a job whose submit never produced an upstream job."""
    return {
        "status": SUBMIT_FAILED,
        "error": error,
        "finished_at": now,
        "updated_at": now,
        "next_poll_at": None,
    }
