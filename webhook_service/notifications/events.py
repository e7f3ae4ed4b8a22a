"""The pure parts of outbound notifications: the event body, its signature, the retry schedule.

Nothing here touches the network, the database or the clock: the time and the randomness are
arguments, so every rule can be tested exactly.

Signing follows the Standard Webhooks specification, so a client verifies a notification with
the ``standardwebhooks`` library (or twenty lines of its own): the signed content is
``"{webhook-id}.{webhook-timestamp}.{body}"``, HMAC-SHA256 keyed with the base64-decoded part of
a ``whsec_<base64>`` secret, sent as ``webhook-signature: v1,<base64 digest>``.

One event per job: `build_event` runs once, when the job becomes settled, and its id and body
bytes are kept and sent unchanged on every attempt; only the signature's timestamp is fresh
each time (a receiver refuses one older than five minutes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..job_json import iso

SECRET_PREFIX = "whsec_"
# Delay after each failed attempt: about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, then daily.
SCHEDULE_SECONDS = (5, 300, 1800, 7200, 18000, 36000, 86400, 86400, 86400)
MAX_ATTEMPTS = len(SCHEDULE_SECONDS) + 1
JITTER = 0.1
# A Retry-After is honoured, but never holds the next attempt back by more than this.
MAX_RETRY_AFTER_SECONDS = 86400


class SigningSecretError(ValueError):
    """``NOTIFY_SIGNING_SECRET`` is missing or not a usable ``whsec_<base64>`` secret."""


def webhook_id_for(job_id: str) -> str:
    """The ``webhook-id`` of a job's one notification: the same on every attempt and resend."""
    return f"msg_{job_id}"


def build_event(job_json: Mapping[str, Any], now: float) -> tuple[str, bytes]:
    """Return (webhook id, body bytes) of the notification for a settled job.

    ``now`` (Unix seconds) becomes the event's ``timestamp``; the body is strict JSON
    (a non-finite number raises ValueError rather than being sent).
    """
    job_id, status = job_json.get("id"), job_json.get("status")
    if not isinstance(job_id, str) or not job_id or not isinstance(status, str) or not status:
        raise ValueError("a job's JSON needs a non-empty string 'id' and 'status'")
    event = {"type": f"job.{status}", "timestamp": iso(now), "data": dict(job_json)}
    body = json.dumps(event, allow_nan=False, separators=(",", ":"), ensure_ascii=True)
    return webhook_id_for(job_id), body.encode("ascii")


def signing_key(secret: str | None) -> bytes:
    """Decode a ``whsec_<base64>`` secret into its HMAC key, or raise `SigningSecretError`."""
    if not secret or not secret.strip():
        raise SigningSecretError("NOTIFY_SIGNING_SECRET is not set.")
    text = secret.strip()
    if not text.startswith(SECRET_PREFIX):
        raise SigningSecretError("NOTIFY_SIGNING_SECRET must look like whsec_<base64>.")
    encoded = text[len(SECRET_PREFIX) :]
    try:
        # Padding may be left off, as the standardwebhooks library allows.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SigningSecretError(
            "NOTIFY_SIGNING_SECRET is not valid base64 after whsec_."
        ) from None
    if not key:
        raise SigningSecretError("NOTIFY_SIGNING_SECRET must not be empty after whsec_.")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (``timestamp`` in Unix seconds)."""
    key = signing_key(secret)
    if not msg_id or any(char.isspace() for char in msg_id):
        raise ValueError("a webhook id must be non-empty and without spaces")
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
    }


def next_delay(attempt: int, retry_after: float | None, rand: Callable[[], float]) -> float | None:
    """Seconds to wait after failed attempt ``attempt`` (1-based), or None: no more attempts.

    The schedule's delay is jittered by ±10 % (``rand`` returns [0, 1)). A ``Retry-After``
    longer than that is honoured, up to a day; a shorter one never brings an attempt forward.
    """
    if attempt < 1:
        raise ValueError("attempts are numbered from 1")
    if attempt >= MAX_ATTEMPTS:
        return None
    delay = SCHEDULE_SECONDS[attempt - 1] * (1 - JITTER + 2 * JITTER * rand())
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay
