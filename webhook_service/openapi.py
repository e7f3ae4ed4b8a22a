"""GET /openapi.json: the API described by apispec from the marshmallow schemas.

Requests are described by the schemas the API validates with (`schemas`), answers
by `api_docs`; operations are listed here, one entry per route.  The document is
built once per process and served without authentication.
"""

from __future__ import annotations

import functools
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from . import api_docs
from .api_docs import OUTPUT_STATUSES
from .jobs import STATUSES
from .schemas import JobRequestSchema

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.0.3"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
JSON = "application/json"

ERRORS = {
    400: "The body is not JSON, or not a JSON object.",
    401: "No valid bearer token.",
    402: "ModelGates wants payment.",
    404: "No such job or video.",
    409: "Conflict: an Idempotency-Key reused or in flight, or a video not ready.",
    413: "The body is too large.",
    416: "The Range cannot be satisfied.",
    422: "Field errors: `details` is `{field: [messages]}`.",
    502: "ModelGates failed or refused our credentials.",
    503: "Not configured, the database is unavailable, or ModelGates is rate limiting.",
}


def _errors(*statuses: int) -> dict[int, Any]:
    return {
        status: {"description": ERRORS[status], "content": {JSON: {"schema": "Error"}}}
        for status in statuses
    }


def _json(schema: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _path_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "in": "path",
        "name": name,
        "required": True,
        "schema": schema,
        "description": description,
    }


SUBMIT_EXAMPLE = {
    "model": "google/veo-3.1",
    "prompt": "a lighthouse at dusk, waves breaking",
    "duration": 8,
    "resolution": "720p",
}
JOB_ID = _path_parameter("job_id", {"type": "string"}, "The service's job id.")
JOB_ANSWER_HEADERS = {
    "Location": {"schema": {"type": "string"}, "description": "The job's URL."},
}
VIDEO = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}
WEBHOOK = {
    "summary": "Receive a signed ModelGates callback",
    "description": "The signature (`X-OpenRouter-Signature` or `X-ModelGates-Signature`) "
    "is the authentication. Checks run in order: size, secret configured, signature, "
    "envelope.",
    "security": [],
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": {"type": "object"}}},
    },
    "responses": {
        204: {"description": "Stored (or a duplicate); the job is updated."},
        **_errors(400, 401, 413, 503),
    },
}


def build_spec() -> APISpec:
    """Return the OpenAPI document of every route."""
    spec = APISpec(
        title="webhook_service",
        version="1",
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": "Submit ModelGates video jobs; follow them; fetch verified videos."},
    )
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", schema=api_docs.ErrorSchema)
    spec.components.schema("Job", schema=api_docs.JobSchema)
    spec.components.schema("JobPage", schema=api_docs.JobPageSchema)
    spec.components.schema("JobRequest", schema=JobRequestSchema)
    spec.components.schema("Health", schema=api_docs.HealthSchema)
    spec.components.schema("ModelList", schema=api_docs.ModelListSchema)

    spec.path(
        path="/healthz",
        operations={
            "get": {
                "summary": "Is the database answering",
                "security": [],
                "responses": {200: _json("Health", "The database answers."), **_errors(503)},
            }
        },
    )
    spec.path(
        path="/api/jobs",
        operations={
            "post": {
                "summary": "Submit a video job (upstream is contacted at most once)",
                "security": BEARER,
                "parameters": [
                    {
                        "in": "header",
                        "name": "Idempotency-Key",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "Same key and body: the same job, upstream not "
                        "contacted again. Scoped to the API token.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": "JobRequest", "example": SUBMIT_EXAMPLE}},
                },
                "responses": {
                    200: _json(
                        "Job",
                        "The job an Idempotency-Key already made.",
                        headers=JOB_ANSWER_HEADERS,
                    ),
                    202: _json("Job", "Submitted.", headers=JOB_ANSWER_HEADERS),
                    **_errors(400, 401, 402, 409, 413, 422, 502, 503),
                },
            },
            "get": {
                "summary": "List jobs, newest first",
                "security": BEARER,
                "parameters": [
                    {
                        "in": "query",
                        "name": "status",
                        "schema": {"type": "string", "enum": list(STATUSES)},
                    },
                    {
                        "in": "query",
                        "name": "limit",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "in": "query",
                        "name": "cursor",
                        "schema": {"type": "string"},
                        "description": "`next_cursor` of the previous page.",
                    },
                ],
                "responses": {
                    200: _json("JobPage", "A page of jobs."),
                    **_errors(401, 422, 503),
                },
            },
        },
    )
    spec.path(
        path="/api/jobs/{job_id}",
        operations={
            "get": {
                "summary": "One job",
                "security": BEARER,
                "parameters": [JOB_ID],
                "responses": {200: _json("Job", "The job."), **_errors(401, 404, 503)},
            }
        },
    )
    spec.path(
        path="/api/jobs/{job_id}/videos/{index}",
        operations={
            "get": {
                "summary": "A downloaded video (Range requests answer 206)",
                "description": "Outputs are "
                + ", ".join(OUTPUT_STATUSES)
                + "; only a downloaded one is served. With bucket storage the answer may "
                "be a redirect to a pre-signed URL valid for at most 15 minutes.",
                "security": BEARER,
                "parameters": [
                    JOB_ID,
                    _path_parameter("index", {"type": "integer", "minimum": 0}, "Output index."),
                    {"in": "header", "name": "Range", "schema": {"type": "string"}},
                ],
                "responses": {
                    200: {"description": "The whole video.", "content": VIDEO},
                    206: {"description": "The requested range.", "content": VIDEO},
                    304: {"description": "Not modified (conditional request)."},
                    307: {"description": "Redirect to a short-lived pre-signed URL."},
                    **_errors(401, 404, 409, 416, 503),
                },
            }
        },
    )
    spec.path(
        path="/api/models",
        operations={
            "get": {
                "summary": "Upstream's video model list (cached briefly)",
                "security": BEARER,
                "responses": {
                    200: _json("ModelList", "The models."),
                    **_errors(401, 502, 503),
                },
            }
        },
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "summary": "Prometheus text exposition, read from the database",
                "security": BEARER,
                "responses": {
                    200: {
                        "description": "Every series.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 503),
                },
            }
        },
    )
    spec.path(path="/webhooks/modelgates", operations={"post": WEBHOOK})
    spec.path(
        path="/webhooks/modelgates/{token}",
        operations={
            "post": {
                **WEBHOOK,
                "parameters": [
                    _path_parameter("token", {"type": "string"}, "The job's callback token.")
                ],
            }
        },
    )
    return spec


@functools.cache
def document() -> dict[str, Any]:
    """Return the OpenAPI document as a dict (built once)."""
    built: dict[str, Any] = build_spec().to_dict()
    return built


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document (no auth)."""
    return jsonify(document())
