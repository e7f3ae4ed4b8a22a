"""Submitting a job upstream: at most once, with a trace before the money is spent.

The job row (``submitting``, with its per-job callback token) is committed
before `POST /videos` goes out, then updated with what came back.  The submit is
never repeated: a refusal (4xx) ends the job as ``submit_failed``; an ambiguous
failure (5xx, timeout, connection lost after sending) leaves it ``submitting``
until a callback bearing its token reveals the upstream id or the worker gives
up after ``SUBMIT_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import accepted, events, jobs
from .config import Settings
from .errors import Conflict, PayloadTooLarge, ServiceError, UpstreamError, ValidationError
from .modelgates import (
    APIError,
    ModelGatesClient,
    ModelGatesError,
    RateLimited,
    RequestRefused,
    TransportError,
)
from .store import Store, StoreUnavailable, open_store

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER = 30
# httpx's timeout bounds each read and write, not the whole request: a 50 MiB body on a
# slow link may take minutes, so only after this long is a submit with no outcome dead.
IN_FLIGHT_GRACE_SECONDS = 600.0
# How long a submit request keeps retrying to record an accepted job before it
# hands the upstream id to the held-submits spool and answers 503.
RECORD_RETRY_SECONDS = 15.0


def in_flight_deadline(settings: Settings, job: Mapping[str, Any]) -> float:
    """When a submit with no recorded outcome must have died with its process."""
    return float(job["created_at"]) + settings.upstream_timeout_seconds + IN_FLIGHT_GRACE_SECONDS


def request_hash(params: Mapping[str, Any], notify_url: str | None = None) -> str:
    """Hash a submit body (and where it is to be notified) so key order does not matter."""
    body = params if notify_url is None else {**params, "notify_url": notify_url}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_job_id() -> str:
    """Return a fresh service job id."""
    return "vj_" + secrets.token_hex(12)


def submit(
    store: Store,
    client: ModelGatesClient,
    settings: Settings,
    client_id: str,
    idempotency_key: str | None,
    params: dict[str, Any],
    clock: Callable[[], float] = time.time,
    record_for: float = RECORD_RETRY_SECONDS,
    notify_url: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Submit ``params`` upstream once; return (job row, whether this call created it).

    ``notify_url`` (never sent upstream) is where the job's notification goes.
    """
    digest = request_hash(params, notify_url)
    now = clock()
    job_id, token = new_job_id(), secrets.token_urlsafe(24)
    with store.transaction():
        if idempotency_key is not None:
            existing = store.job_by_idempotency_key(client_id, idempotency_key)
            if existing is not None:
                return _replay(existing, digest), False
        store.insert_job(
            {
                "id": job_id,
                "callback_token": token,
                "client": client_id,
                "idempotency_key": idempotency_key,
                "request_hash": digest,
                "status": jobs.SUBMITTING,
                "model": params["model"],
                "prompt": params.get("prompt"),
                "params": params,
                "notify_url": notify_url,
                "created_at": now,
                "updated_at": now,
                # Watchdog: if this process dies mid-request the worker settles the job.
                "next_poll_at": in_flight_deadline(settings, {"created_at": now}),
            }
        )

    body = dict(params, callback_url=settings.callback_url(token))
    try:
        answer = client.submit(body)
    except ModelGatesError as error:
        raise _record_failure(store, settings, job_id, error, clock()) from None
    except Exception:
        _record_ambiguous(store, settings, job_id, "the submit failed unexpectedly", clock())
        raise
    upstream_id = answer.get("id")
    if not isinstance(upstream_id, str) or not events.UPSTREAM_ID.match(upstream_id):
        no_id = APIError(502, "submit answer carried no usable job id")
        raise _record_failure(store, settings, job_id, no_id, clock())
    return _record_until_it_sticks(store, settings, job_id, answer, clock, record_for), True


def held_submits(settings: Settings) -> Path:
    """The folder where accepted submits wait when the database cannot take them."""
    return settings.database_path.parent / "held-submits"


def record_held(store: Store, settings: Settings) -> int:
    """Record accepted submits left on disk by an earlier outage; return how many remain."""
    return accepted.drain(held_submits(settings), store, _recorder(settings))


def _recorder(settings: Settings) -> accepted.Record:
    def record(store: Store, job_id: str, answer: Mapping[str, Any]) -> object:
        return record_accepted(store, settings, job_id, answer, time.time())

    return record


def _record_until_it_sticks(
    store: Store,
    settings: Settings,
    job_id: str,
    answer: Mapping[str, Any],
    clock: Callable[[], float],
    record_for: float,
) -> dict[str, Any]:
    """Record upstream's 202, retrying while the database is unavailable.

    Past ``record_for`` the answer is held on disk and recorded in the background;
    the client gets 503 naming the job, which is not to be resubmitted.
    """
    deadline, pause = time.monotonic() + record_for, 0.05
    while True:
        try:
            return record_accepted(store, settings, job_id, answer, clock())
        except StoreUnavailable as error:
            problem: Exception = error
            if time.monotonic() + pause > deadline:
                break
            log.warning("recording accepted submit %s failed (%s); retrying", job_id, error)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        except Exception as error:  # a bug: no point retrying, but the id must survive
            log.exception("recording accepted submit %s failed", job_id)
            problem = error
            break
    # Said first, so the id is in the logs whatever happens next.
    log.error(
        "ModelGates accepted job %s as %s but it could not be recorded (%s); holding it",
        job_id,
        answer.get("id"),
        problem,
    )
    folder = held_submits(settings)
    try:
        accepted.hold(folder, job_id, answer)
    except OSError as error:
        log.error("cannot hold accepted submit %s in %s: %s", job_id, folder, error)
    else:
        accepted.drain_in_background(folder, lambda: open_store(settings), _recorder(settings))
    raise ServiceError(
        "ModelGates accepted the job, but the database is unavailable; it will be recorded"
        " when the database is back. Do not resubmit it.",
        {"job_id": job_id, "upstream_id": answer.get("id")},
        status=503,
        error_code="accepted_not_recorded",
        headers={"Retry-After": str(DEFAULT_RETRY_AFTER)},
    )


def replayed(
    store: Store,
    client_id: str,
    idempotency_key: str,
    params: Mapping[str, Any],
    notify_url: str | None = None,
) -> dict[str, Any] | None:
    """Return the job an earlier request with this key created, if any (409 on misuse)."""
    existing = store.job_by_idempotency_key(client_id, idempotency_key)
    return None if existing is None else _replay(existing, request_hash(params, notify_url))


def _replay(existing: Mapping[str, Any], digest: str) -> dict[str, Any]:
    if existing["request_hash"] != digest:
        raise Conflict(
            "This Idempotency-Key was used with a different body.",
            {"job_id": existing["id"]},
            error_code="idempotency_key_reused",
        )
    if existing["submit_outcome"] is None and existing["status"] == jobs.SUBMITTING:
        raise Conflict(
            "A request with this Idempotency-Key is still in flight.",
            {"job_id": existing["id"]},
            error_code="idempotency_key_in_progress",
        )
    return dict(existing)


def record_accepted(
    store: Store, settings: Settings, job_id: str, answer: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """Record upstream's 202 answer and apply any callbacks that arrived before it."""
    status = answer.get("status")
    if status not in (jobs.IN_PROGRESS, *jobs.UPSTREAM_TERMINAL):
        status = jobs.PENDING  # accepted, whatever it called its first status
    seen = jobs.Observation.from_upstream({**answer, "status": status}, "submit")
    with store.transaction():
        job = store.job(job_id)
        if job is None:
            raise LookupError(f"no job {job_id} in this database")
        jobs.apply_observation(store, job, seen, now)
        job = store.job(job_id) or job
        if not jobs.is_terminal(job["status"]):
            store.update_job(job_id, {"next_poll_at": now + settings.poll_after_seconds})
        events.apply_waiting(store, job_id, now)
        final = store.job(job_id) or job
    return final


def _record_ambiguous(
    store: Store, settings: Settings, job_id: str, error: str, now: float
) -> None:
    with store.transaction():
        job = store.job(job_id)
        assert job is not None
        if job["upstream_id"] or jobs.is_terminal(job["status"]):
            return  # a callback, or the worker's deadline, settled the job meanwhile
        store.update_job(
            job_id,
            {
                "submit_outcome": "ambiguous",
                "error": error,
                "updated_at": now,
                "next_poll_at": job["created_at"] + settings.submit_timeout_seconds,
            },
        )


def _record_failure(
    store: Store, settings: Settings, job_id: str, error: ModelGatesError, now: float
) -> ServiceError:
    """Record why the submit failed and return the API error to answer with."""
    details = {"job_id": job_id}
    refused = isinstance(error, RequestRefused) or (
        isinstance(error, TransportError) and not error.sent
    )
    if refused:
        with store.transaction():
            changes = jobs.fail_submission(f"submit refused: {error}", now)
            store.update_job(job_id, dict(changes, submit_outcome="refused"))
            jobs.queue_notification(store, job_id, now)
    else:
        _record_ambiguous(store, settings, job_id, f"submit outcome unknown: {error}", now)
    log.warning("submit of job %s failed: %s", job_id, error)

    if isinstance(error, TransportError):
        if error.sent:
            return UpstreamError(
                "ModelGates did not answer in time; the job may still have been created.",
                details,
                error_code="upstream_timeout",
            )
        return UpstreamError(
            "ModelGates could not be reached.", details, error_code="upstream_unreachable"
        )
    assert isinstance(error, APIError)
    message = error.message
    if isinstance(error, RateLimited):
        retry_after = str(int(error.retry_after or DEFAULT_RETRY_AFTER))
        return ServiceError(
            message,
            details,
            status=503,
            error_code="upstream_rate_limited",
            headers={"Retry-After": retry_after},
        )
    mapped: dict[int, ServiceError] = {
        400: ValidationError(message, details, error_code="upstream_rejected"),
        404: ValidationError(message, details, error_code="unknown_model"),
        401: UpstreamError(message, details, error_code="upstream_auth_failed"),
        402: ServiceError(message, details, status=402, error_code="payment_required"),
        413: PayloadTooLarge(message, details),
    }
    if error.status in mapped:
        return mapped[error.status]
    if isinstance(error, RequestRefused):
        return UpstreamError(message, details, error_code="upstream_refused")
    return UpstreamError(message, details, error_code="upstream_error")
