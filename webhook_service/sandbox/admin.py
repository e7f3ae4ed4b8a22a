"""The sandbox's own control endpoints under ``/_sandbox/`` (no auth, JSON in and out).

``GET jobs``, ``GET jobs/<id>``, ``GET stats``, ``GET|POST settings``, ``GET|POST
faults``, ``POST advance`` ``{"seconds": x}`` and ``POST reset``.  Job listings
leave out output digests (hashing a GiB output takes a while); ``jobs/<id>`` has them.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ApiError
from .jobs import admin_view
from .state import SandboxState

PREFIX = "/_sandbox/"


def handle_admin(
    state: SandboxState, base_url: str, method: str, path: str, raw: bytes
) -> tuple[int, Any]:
    """Answer one admin request with (status, JSON payload); raise ApiError on bad input."""
    route = path[len(PREFIX) :].rstrip("/")
    body = _json_object(raw) if method == "POST" else {}
    try:
        if method == "GET" and route == "jobs":
            return 200, {"jobs": list_jobs(state, base_url)}
        if method == "GET" and route.startswith("jobs/"):
            return 200, job_details(state, base_url, route[len("jobs/") :])
        if method == "GET" and route == "stats":
            return 200, state.stats()
        if route == "settings" and method in ("GET", "POST"):
            return 200, state.update_settings(body)
        if route == "faults" and method == "GET":
            return 200, {"faults": state.queued_faults()}
        if route == "faults" and method == "POST":
            fault = state.add_fault(**body)
            return 201, {"queued": {**body, "endpoint": fault.endpoint}}
        if route == "advance" and method == "POST":
            return 200, {"now": state.advance(body.get("seconds", 0)), "offset": state.offset}
        if route == "reset" and method == "POST":
            state.reset()
            return 200, {"reset": True}
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    raise ApiError(404, f"no admin endpoint {method} {path}")


def list_jobs(state: SandboxState, base_url: str) -> list[dict[str, Any]]:
    """Return the admin view of every job, oldest first, without output digests."""
    with state.lock:
        now = state.now()
        return [admin_view(job, now, base_url, with_sha256=False) for job in state.jobs.values()]


def job_details(state: SandboxState, base_url: str, job_id: str) -> dict[str, Any]:
    """Return the admin view of one job with output digests; ApiError 404 if unknown."""
    try:
        job = state.job(job_id)
    except KeyError:
        raise ApiError(404, f"job {job_id} not found") from None
    return admin_view(job, state.now(), base_url, with_sha256=True)


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body
