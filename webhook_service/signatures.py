"""ModelGates webhook signatures: sign and verify, as pure functions.

A signature header reads ``t=<unix seconds>,v1=<hex>`` where
``v1 = HMAC-SHA256(secret, "<t>," + raw body)``.  Verification works on the raw
bytes, compares in constant time, accepts any of several secrets (rotation) and
refuses timestamps too far in the past *or* the future.  Nothing is parsed
before the signature checks out.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Protocol

SIGNATURE_HEADERS = ("X-OpenRouter-Signature", "X-ModelGates-Signature")
IDEMPOTENCY_HEADERS = ("X-OpenRouter-Idempotency-Key", "X-ModelGates-Idempotency-Key")
TOLERANCE_SECONDS = 300


class Headers(Protocol):
    """Anything with a case-insensitive ``get``, such as werkzeug's or httpx's headers."""

    def get(self, key: str, /) -> str | None: ...


class SignatureError(Exception):
    """The delivery is not provably from ModelGates; the message says why."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the signature header value for ``body`` signed at ``timestamp``."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def _digest(secret: str, timestamp: int | str, body: bytes) -> str:
    message = f"{timestamp},".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def header_value(headers: Headers, names: Iterable[str]) -> str | None:
    """Return the first of ``names`` present in ``headers`` (case-insensitive)."""
    for name in names:
        value = headers.get(name)
        if value is not None:
            return value
    return None


def verify(
    body: bytes,
    headers: Headers,
    secrets: Iterable[str],
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> int:
    """Check the delivery's signature; return its timestamp or raise SignatureError."""
    keys = [secret for secret in secrets if secret]
    if not keys:
        raise SignatureError("no signing secret is configured")
    header = header_value(headers, SIGNATURE_HEADERS)
    if header is None:
        raise SignatureError("missing signature header")
    timestamp, candidates = _parse_header(header)
    if abs(now - timestamp) > tolerance:
        raise SignatureError("signature timestamp outside the tolerance window")
    expected = [_digest(key, timestamp, body) for key in keys]
    # Compare against every secret so timing does not reveal which one matched.
    matched = False
    for digest in expected:
        for candidate in candidates:
            matched |= hmac.compare_digest(digest, candidate)
    if not matched:
        raise SignatureError("no signature matches")
    return timestamp


def _parse_header(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isascii() or not value.isdigit():
                raise SignatureError("signature timestamp is not a number")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.strip())
    if timestamp is None:
        raise SignatureError("signature header has no t=")
    if not candidates:
        raise SignatureError("signature header has no v1=")
    return timestamp, candidates
