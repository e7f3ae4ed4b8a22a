"""POST /webhooks/modelgates[/<token>]: the signed completion-callback receiver.

Checks run in the contract's order: size (413), a secret configured (503),
signature (401), envelope (400).  Nothing is parsed before the signature is
verified, and the 204 goes out only after the event is committed.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, request

from .. import context, events
from ..errors import error_response
from ..signatures import SignatureError, verify

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

BODY_LIMIT = 256 * 1024


@bp.post("/modelgates")
@bp.post("/modelgates/<token>")
def receive(token: str | None = None) -> Response:
    """Verify a callback, store and apply it, then answer 204."""
    body = _read_limited()
    if body is None:
        return error_response(413, "payload_too_large", "Webhook bodies are limited to 256 KiB.")
    secrets = context.settings().webhook_secrets
    if not secrets:
        return error_response(
            503, "not_configured", "MODELGATES_WEBHOOK_SECRETS is not configured."
        )
    now = time.time()
    try:
        signed_at = verify(body, request.headers, secrets, now)
    except SignatureError as error:
        return error_response(401, "invalid_signature", f"Signature rejected: {error}.")
    source = {
        "remote_addr": request.remote_addr,
        "url": f"{request.scheme}://{request.host}{request.path}",
    }
    receipt = events.receive(context.store(), body, request.headers, token, signed_at, now, source)
    if receipt.verdict == "rejected":
        return error_response(
            400,
            "invalid_event",
            f"Not a ModelGates event: {receipt.reason}.",
            {"event_id": receipt.event_id} if receipt.event_id else None,
        )
    return Response(status=204)


def _read_limited() -> bytes | None:
    """Read the body, or return None as soon as it proves larger than the limit."""
    length = request.content_length
    if length is not None and length > BODY_LIMIT:
        return None
    body = request.stream.read(BODY_LIMIT + 1)
    return None if len(body) > BODY_LIMIT else body
