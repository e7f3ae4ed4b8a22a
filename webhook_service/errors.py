"""The service's exceptions and the one JSON error body they all turn into.

Every error answer has the shape
``{"error": {"code": "<snake_case>", "message": "<sentence>", "details": {...}}}``.
`ServiceError` subclasses are also werkzeug `HTTPException`s, so Flask knows their
status; `init_app` installs the single handler that renders them (and werkzeug's own
404/405/413 …) in that shape, a last-resort handler that answers any other exception
with a bare 500 body (logged, never described to the client), and the strict JSON
provider, so no answer ever carries ``NaN`` or ``Infinity``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from . import strict_json
from .store.base import StoreUnavailable


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build the contract's JSON error answer."""
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class ServiceError(HTTPException):
    """Base of every error this service answers with on purpose."""

    code = 500
    error_code = "internal_error"
    description = "The service failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        details: dict[str, Any] | None = None,
        *,
        status: int | None = None,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.description)
        if status is not None:
            self.code = status
        if error_code is not None:
            self.error_code = error_code
        self.details = details or {}
        self.extra_headers = headers or {}


class BadRequest(ServiceError):
    code = 400
    error_code = "bad_request"
    description = "The request body is not a JSON object."


class Unauthorized(ServiceError):
    code = 401
    error_code = "unauthorized"
    description = "A valid bearer token is required."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    code = 404
    error_code = "not_found"
    description = "No such resource."


class Conflict(ServiceError):
    code = 409
    error_code = "conflict"
    description = "The request conflicts with the resource's current state."


class PayloadTooLarge(ServiceError):
    code = 413
    error_code = "payload_too_large"
    description = "The request body is too large."


class ValidationError(ServiceError):
    code = 422
    error_code = "validation_error"
    description = "Some fields are invalid."


class NotConfigured(ServiceError):
    code = 503
    error_code = "not_configured"
    description = "The service is not configured for this request."


class UpstreamError(ServiceError):
    code = 502
    error_code = "upstream_error"
    description = "ModelGates did not answer as expected."


def _render(error: HTTPException) -> Response:
    if isinstance(error, ServiceError):
        return error_response(
            error.code or 500,
            error.error_code,
            error.description or "",
            error.details,
            error.extra_headers,
        )
    status = error.code or 500
    if status == 500:
        # werkzeug's own 500 text is a paragraph about overload; say the same as ours.
        return error_response(status, "internal_error", ServiceError.description)
    code = (error.name or "error").lower().replace(" ", "_").replace("'", "")
    code = {"request_entity_too_large": PayloadTooLarge.error_code}.get(code, code)
    # Keep what the status needs besides the body: Allow, Content-Range, WWW-Authenticate.
    kept = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
    return error_response(status, code, error.description or error.name, headers=kept)


def _render_unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return _render(error)
    if isinstance(error, StoreUnavailable):
        # Not a bug: the database is busy or away. Clients and senders retry a 503.
        current_app.logger.warning("database unavailable: %s", error)
        return error_response(
            503,
            "database_unavailable",
            "The database does not answer; try again shortly.",
            headers={"Retry-After": "5"},
        )
    current_app.logger.exception("unhandled error")
    return error_response(500, "internal_error", ServiceError.description)


def init_app(app: Flask) -> None:
    """Render every answer of the app as strict JSON, every error in the contract's body."""
    strict_json.init_app(app)
    app.register_error_handler(HTTPException, _render)
    app.register_error_handler(Exception, _render_unexpected)
