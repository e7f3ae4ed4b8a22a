"""ModelGates webhook signatures: sign and verify, as pure functions.

A signature header reads ``t=<unix seconds>,v1=<hex>`` where
``v1 = HMAC-SHA256(secret, "<t>," + raw body)``.  Verification works on the raw
bytes, compares in constant time, accepts any of several secrets (rotation) and
refuses timestamps too far in the past *or* the future.  Nothing is parsed
before the signature checks out.

The header itself comes from anyone, so it is read defensively: an over-long
header, a repeated or over-long ``t=``, or a ``v1=`` that is not 64 hex digits is
a `SignatureError` (a 401), never an exception of another kind.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Protocol

SIGNATURE_HEADERS = ("X-OpenRouter-Signature", "X-ModelGates-Signature")
IDEMPOTENCY_HEADERS = ("X-OpenRouter-Idempotency-Key", "X-ModelGates-Idempotency-Key")
TOLERANCE_SECONDS = 300
MAX_HEADER_LENGTH = 4096
MAX_TIMESTAMP_DIGITS = 12  # Unix seconds until the year 33658
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


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
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError("signature header is too long")
    timestamp: int | None = None
    candidates: list[str] = []
    seen_v1 = False
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if timestamp is not None:
                raise SignatureError("signature header has more than one t=")
            if not (value.isascii() and value.isdigit()) or len(value) > MAX_TIMESTAMP_DIGITS:
                raise SignatureError("signature timestamp is not a number")
            timestamp = int(value)
        elif key == "v1":
            seen_v1 = True
            candidate = value.strip().lower()
            # Anything but a hex SHA-256 can never match: not worth comparing.
            if HEX_DIGEST.match(candidate):
                candidates.append(candidate)
    if timestamp is None:
        raise SignatureError("signature header has no t=")
    if not candidates:
        if seen_v1:
            raise SignatureError("signature v1= is not a hex SHA-256 digest")
        raise SignatureError("signature header has no v1=")
    return timestamp, candidates
