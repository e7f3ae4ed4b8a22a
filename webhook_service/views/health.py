"""GET /healthz: is the database answering."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import context
from ..errors import error_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 when the database answers, 503 otherwise."""
    try:
        healthy = context.store().ping()
    except Exception:
        healthy = False
    if healthy:
        return jsonify({"status": "ok"})
    return error_response(503, "database_unavailable", "The database does not answer.")
