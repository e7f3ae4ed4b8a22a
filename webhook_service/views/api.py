"""The REST API under /api: submit, list, get and serve jobs; list models."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any

import marshmallow
from flask import Blueprint, Response, g, jsonify, request
from werkzeug.wrappers import Response as BaseResponse

from .. import context, strict_json, submission
from ..addresses import NotifyURLError, check_notify_url
from ..catalog import ModelCatalog
from ..errors import (
    BadRequest,
    Conflict,
    NotConfigured,
    NotFound,
    UpstreamError,
    ValidationError,
)
from ..job_json import job_json
from ..jobs import COMPLETED, STATUSES, is_settled
from ..media import send_video
from ..modelgates import ModelGatesError
from ..schemas import JobRequestSchema, capability_errors
from ..store import Store
from .auth import require_bearer

bp = Blueprint("api", __name__, url_prefix="/api")
log = logging.getLogger(__name__)

MAX_PAGE = 100
DEFAULT_PAGE = 20
MAX_IDEMPOTENCY_KEY = 255
MAX_SQL_INTEGER = 2**63 - 1
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
"""Every id this service hands out has this shape; nothing else is looked up."""
PRIVATE = ("private", "no-store")
"""Cache-Control directives any one of which keeps an answer out of shared caches."""


@bp.before_app_request
def authenticate() -> None:
    """Every /api path needs a bearer token, even one that matches no route."""
    if not (request.path == "/api" or request.path.startswith("/api/")):
        return
    # Idempotency keys are scoped per API token; keep a digest, never the token.
    g.client_id = require_bearer()


@bp.after_app_request
def keep_private(response: Response) -> Response:
    """No /api answer, error or video (200, 206, 304 …), may sit in a shared cache."""
    if request.path == "/api" or request.path.startswith("/api/"):
        directives = {
            part.strip().split("=")[0].lower()
            for part in response.headers.get("Cache-Control", "").split(",")
        }
        if "public" in directives or not directives & set(PRIVATE):
            response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.post("/jobs")
def submit_job() -> tuple[Response, int, dict[str, str]]:
    """Validate, then submit upstream once (or replay an Idempotency-Key's job)."""
    params = _validated_body()
    settings = context.settings()
    notify_url = params.pop("notify_url", None) or settings.notify_url
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ValidationError(
            "Idempotency-Key must be 1 to 255 characters.",
            {"Idempotency-Key": ["Must be 1 to 255 characters."]},
        )
    store = context.store()
    if key is not None:
        existing = submission.replayed(store, g.client_id, key, params, notify_url)
        if existing is not None:
            return _job_answer(store, existing, 200)
    _check_notify_url(notify_url)  # after the replay: a retry never waits on DNS
    if settings.public_base_url is None:
        raise NotConfigured("PUBLIC_BASE_URL is not configured.")
    services = context.services()
    client = services.client()
    _check_capabilities(services.catalog, params)
    job, created = submission.submit(
        store, client, settings, g.client_id, key, params, notify_url=notify_url
    )
    return _job_answer(store, job, 202 if created else 200)


def _check_notify_url(url: str | None) -> None:
    """Vet a notification URL (422 when refused); 503 when notifications cannot be signed.

    The URL is kept as given: every delivery vets it again, address included.
    """
    if url is None:
        return
    settings = context.settings()
    if settings.notify_signing_secret is None:
        raise NotConfigured("NOTIFY_SIGNING_SECRET is not set: notifications cannot be signed.")
    try:
        check_notify_url(
            url,
            allow_http=settings.allow_insecure_callbacks,
            allow_private=settings.allow_private_notify_urls,
        )
    except NotifyURLError as error:
        raise ValidationError(details={"notify_url": [str(error)]}) from None


def _job_answer(
    store: Store, job: dict[str, Any], status: int
) -> tuple[Response, int, dict[str, str]]:
    return jsonify(_job_json(store, job)), status, {"Location": f"/api/jobs/{job['id']}"}


def _jobs_json(store: Store, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job JSON of many jobs, with two more queries in all."""
    ids = [job["id"] for job in jobs]
    outputs, notifications = store.outputs(ids), store.notifications(ids)
    return [
        job_json(
            job,
            outputs[job["id"]],
            notifications.get(job["id"]),
            is_settled(job, outputs[job["id"]]),
        )
        for job in jobs
    ]


def _job_json(store: Store, job: dict[str, Any]) -> dict[str, Any]:
    return _jobs_json(store, [job])[0]


def _validated_body() -> dict[str, Any]:
    try:
        body = strict_json.loads(request.get_data())
    except strict_json.JSONRefused as error:
        if error.path is None:
            raise BadRequest(error.message) from None
        raise ValidationError(details={error.path: [error.message]}) from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    if "callback_url" in body:
        raise ValidationError(
            "callback_url is set by the service.",
            {"callback_url": ["The service sets the callback URL itself."]},
        )
    try:
        loaded: dict[str, Any] = JobRequestSchema().load(body)
    except marshmallow.ValidationError as error:
        raise ValidationError(details=_flatten(error.messages)) from None
    return loaded


def _flatten(messages: Any) -> dict[str, list[str]]:
    """Turn marshmallow's nested messages into ``{field: [messages]}``.

    A nested error is listed under its top-level field (``frame_images``, saying
    where inside) and under its full dotted path (``frame_images.0.frame_type``).
    """
    flat: dict[str, list[str]] = {}

    def add(path: str, texts: list[str]) -> None:
        flat.setdefault(path or "_schema", []).extend(texts)
        top, dot, rest = path.partition(".")
        if dot:
            flat.setdefault(top, []).extend(f"{rest}: {text}" for text in texts)

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            add(prefix, value)
        else:
            add(prefix, [str(value)])

    walk("", messages)
    return flat


def _check_capabilities(catalog: ModelCatalog, params: dict[str, Any]) -> None:
    try:
        model = catalog.find(params["model"])
    except ModelGatesError:
        # Upstream validates too, and a refused submit costs nothing.
        return
    if model is None:
        raise ValidationError(
            f"ModelGates has no model {params['model']!r}.",
            {"model": ["Unknown model."]},
            error_code="unknown_model",
        )
    problems = capability_errors(params, model)
    if problems:
        raise ValidationError(f"{params['model']} does not support these values.", problems)


@bp.get("/jobs")
def list_jobs() -> Response:
    """Jobs newest first, a cursor page at a time."""
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise ValidationError(details={"status": [f"Must be one of: {', '.join(STATUSES)}."]})
    limit = _whole_number(request.args.get("limit", str(DEFAULT_PAGE)), MAX_PAGE)
    if limit is None or limit < 1:
        raise ValidationError(details={"limit": [f"Must be a whole number from 1 to {MAX_PAGE}."]})
    before = _decode_cursor(request.args.get("cursor"))
    store = context.store()
    rows = store.list_jobs(status, limit + 1, before)
    page, more = rows[:limit], len(rows) > limit
    return jsonify(
        {
            "jobs": _jobs_json(store, page),
            "next_cursor": _encode_cursor(page[-1]["seq"]) if more else None,
        }
    )


def _whole_number(text: str, largest: int) -> int | None:
    """Return ``text`` as a number from 0 to ``largest``, if it is written in ASCII digits."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(largest)):
        return None
    number = int(text)
    return number if number <= largest else None


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, seq = text.partition(":")
        number = _whole_number(seq, MAX_SQL_INTEGER)
        if prefix == "seq" and number is not None:
            return number
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ValidationError(details={"cursor": ["Not a cursor this API returned."]})


def _find_job(store: Store, job_id: str) -> dict[str, Any]:
    """The job, or 404; an id this service could never have made never reaches the store."""
    job = store.job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise NotFound(f"No job {job_id[:200]}.")
    return job


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """One job with its outputs."""
    store = context.store()
    return jsonify(_job_json(store, _find_job(store, job_id)))


@bp.get("/jobs/<job_id>/videos/<raw_index>")
def get_video(job_id: str, raw_index: str) -> BaseResponse:
    """Serve a downloaded video; Range requests get 206."""
    store = context.store()
    job = _find_job(store, job_id)
    if not (raw_index.isascii() and raw_index.isdigit()):
        raise NotFound(f"Job {job_id} has no video {raw_index}.")
    # An index past any SQL integer is one no job has: the same answers as one past the end.
    index = _whole_number(raw_index, MAX_SQL_INTEGER)
    if job["status"] != COMPLETED:
        raise Conflict(f"Job {job_id} is {job['status']}, not completed.", error_code="not_ready")
    output = store.output(job_id, index) if index is not None else None
    if output is None:
        if job["outputs_known"]:
            raise NotFound(f"Job {job_id} has no video {raw_index}.")
        raise Conflict("The job's outputs are not known yet.", error_code="not_ready")
    if output["status"] != "downloaded":
        raise Conflict(
            f"Video {index} is {output['status']}, not downloaded yet.", error_code="not_ready"
        )
    try:
        response = send_video(context.media(), job_id, output["idx"], etag=output["sha256"])
    except OSError as error:  # MediaMissing, or deleted between the check and the send
        # Recorded as downloaded, yet the file is gone (a wiped disk, a deploy without
        # the volume): say so plainly rather than fail, and leave a trace for operators.
        log.error("video %s of job %s is recorded but missing: %s", index, job_id, error)
        raise Conflict(
            f"Video {index} was downloaded but is missing from storage.",
            {"job_id": job_id, "index": index},
            error_code="output_missing",
        ) from None
    return response


@bp.get("/models")
def list_models() -> Response:
    """Upstream's model list, from the per-process cache."""
    services = context.services()
    services.client()
    try:
        models = services.catalog.models()
    except ModelGatesError as error:
        raise UpstreamError(f"ModelGates model list unavailable: {error}") from None
    try:
        return jsonify({"data": strict_json.scrub(models)})
    except strict_json.JSONRefused as error:
        raise UpstreamError(f"ModelGates model list unusable: {error.message}") from None
