"""The sandbox's one error shape: ``ApiError`` and the ModelGates error envelope it becomes.

Envelope: ``{"error": {"code": <status>, "message": str, "metadata": {...}|null},
"user_id": null}``; 429 and 503 answers also carry ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

ERROR_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    411: "length_required",
    413: "payload_too_large",
    416: "range_not_satisfiable",
    429: "rate_limit_exceeded",
    500: "internal_error",
    502: "bad_gateway",
    503: "provider_unavailable",
    504: "gateway_timeout",
}
RETRY_AFTER_STATUSES = (429, 503)


class ApiError(Exception):
    """An answer other than success; the handler turns it into the error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.headers = headers or {}


def envelope(status: int, message: str) -> dict[str, Any]:
    """Return the error body ModelGates sends for ``status``."""
    error_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "client_error")
    return {
        "error": {"code": status, "message": message, "metadata": {"error_type": error_type}},
        "user_id": None,
    }
