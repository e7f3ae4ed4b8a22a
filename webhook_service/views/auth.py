"""Who may call: one check of a token against SERVICE_API_TOKENS, for every view."""

from __future__ import annotations

import hashlib
import hmac

from flask import request

from .. import context
from ..errors import Unauthorized


def token_digest(token: str) -> str:
    """What is kept of a token (idempotency scope, session): its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_known_token(token: str) -> bool:
    """Compare ``token`` with every configured one, in constant time."""
    matched = False
    for known in context.settings().service_api_tokens:
        matched |= hmac.compare_digest(known.encode(), token.encode())
    return matched and bool(token)


def require_bearer() -> str:
    """Check ``Authorization: Bearer`` against SERVICE_API_TOKENS; return the token's digest."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not is_known_token(token):
        raise Unauthorized()
    return token_digest(token)
