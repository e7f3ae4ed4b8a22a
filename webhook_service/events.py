"""Completion callbacks: parse the envelope, store the event, apply it once.

Every verified delivery is stored in the same transaction that applies it, so
the 204 goes out only after both are committed.  Duplicates (same idempotency
key, or same body when the key is absent) hit the unique dedup key and change
nothing.  Events for jobs we cannot place yet are kept as ``waiting`` and
applied by `apply_waiting` when the job (or its upstream id) appears.

Verdicts: ``applied``, ``unchanged`` (nothing new: a terminal job, an older
status), ``waiting``, ``ignored`` (unknown type), ``mismatch``
(token and upstream id name different jobs), ``rejected`` (not the envelope),
``error`` (applying raised; kept for `replay`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import jobs, strict_json
from .observability import callback_lag
from .signatures import IDEMPOTENCY_HEADERS, Headers, header_value
from .store import Store, StoreUnavailable

log = logging.getLogger(__name__)

EVENT_PREFIX = "video.generation."
KNOWN_TYPES = frozenset(EVENT_PREFIX + status for status in jobs.UPSTREAM_TERMINAL)
PROCESSED = frozenset({"applied", "unchanged"})
UPSTREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
KEPT_HEADERS = (
    "Content-Type",
    "User-Agent",
    "X-OpenRouter-Signature",
    "X-ModelGates-Signature",
    *IDEMPOTENCY_HEADERS,
)


class EnvelopeError(ValueError):
    """A signed body that is not a ModelGates event envelope."""


@dataclass(frozen=True)
class Envelope:
    """A well-formed event: ``type`` is ``video.generation.<data.status>``."""

    type: str
    upstream_id: str
    status: str
    data: Mapping[str, Any]
    created_at: Any = None  # as upstream wrote it; only the lag metric reads it

    @property
    def known(self) -> bool:
        """Answer whether this service applies events of this type."""
        return self.type in KNOWN_TYPES


@dataclass(frozen=True)
class Receipt:
    """What became of one delivery."""

    event_id: int | None
    verdict: str  # as stored; "duplicate" when the event was already there
    reason: str | None = None


def parse_envelope(body: bytes) -> Envelope:
    """Parse a verified body; raise EnvelopeError saying what is wrong.

    Numbers pass as parsed (``NaN``, ``1e999``): the state machine clamps the few
    it reads.  Text SQLite cannot store and absurd nesting are refused.
    """
    try:
        payload = strict_json.loads(body, strict=False)
    except strict_json.JSONRefused as error:
        reason = error.message.rstrip(".")
        raise EnvelopeError(reason[:1].lower() + reason[1:]) from None
    if not isinstance(payload, dict):
        raise EnvelopeError("body is not a JSON object")
    event_type, data = payload.get("type"), payload.get("data")
    if not isinstance(event_type, str) or not event_type:
        raise EnvelopeError("type is missing")
    if not isinstance(data, dict):
        raise EnvelopeError("data is missing")
    upstream_id, status = data.get("id"), data.get("status")
    if not isinstance(upstream_id, str) or not upstream_id:
        raise EnvelopeError("data.id is missing")
    if not UPSTREAM_ID.match(upstream_id) or ".." in upstream_id:
        raise EnvelopeError("data.id has characters a job id never has")
    if not isinstance(status, str) or not status:
        raise EnvelopeError("data.status is missing")
    if event_type != EVENT_PREFIX + status:
        raise EnvelopeError(f"type {event_type} disagrees with data.status {status}")
    return Envelope(event_type, upstream_id, status, data, payload.get("created_at"))


def dedup_key(body: bytes, headers: Headers) -> str:
    """Return the key that makes a redelivery a duplicate."""
    key = header_value(headers, IDEMPOTENCY_HEADERS)
    if key:
        return "key:" + key.strip()
    return "body:" + hashlib.sha256(body).hexdigest()


def receive(
    store: Store,
    body: bytes,
    headers: Headers,
    token: str | None,
    signed_at: int,
    now: float,
    source: Mapping[str, str | None] | None = None,
) -> Receipt:
    """Store a verified delivery and apply it; all committed before returning.

    ``source`` may give ``remote_addr`` and ``url`` as the service saw them.
    """
    kept = {name: value for name in KEPT_HEADERS if (value := headers.get(name)) is not None}
    row: dict[str, Any] = {
        "idempotency_key": header_value(headers, IDEMPOTENCY_HEADERS),
        "callback_token": token,
        "body": body,
        "headers": json.dumps(kept, sort_keys=True),
        "signed_at": signed_at,
        "received_at": now,
        "remote_addr": (source or {}).get("remote_addr"),
        "url": (source or {}).get("url"),
    }
    try:
        envelope = parse_envelope(body)
    except EnvelopeError as error:
        row.update(
            dedup_key="rejected:" + hashlib.sha256(body).hexdigest(),
            lag_seconds=None,  # not an upstream event: no lag to measure
            verdict="rejected",
            received_verdict="rejected",
            reason=str(error),
        )
        event_id = store.batched(lambda store: store.insert_event(row))
        return Receipt(event_id, "rejected", str(error))

    row.update(
        dedup_key=dedup_key(body, headers),
        event_type=envelope.type,
        upstream_id=envelope.upstream_id,
        lag_seconds=callback_lag(envelope.created_at, now),
    )

    def store_and_apply(store: Store) -> Receipt:
        event_id = store.insert_event({**row, "verdict": "received"})
        if event_id is None:
            return Receipt(None, "duplicate")
        verdict, job_id = apply_event(store, envelope, token, now)
        store.update_event(
            event_id,
            {
                "verdict": verdict,
                "received_verdict": verdict,  # never changes again: what /metrics counts
                "job_id": job_id,
                "applied_at": now if verdict in PROCESSED else None,
            },
        )
        return Receipt(event_id, verdict)

    try:
        return store.batched(store_and_apply)
    except StoreUnavailable:
        raise  # the database itself failed: answer 503 so the sender retries
    except Exception as error:
        # Applying failed (a bug, say): keep the event for `replay`, still acknowledged.
        log.exception("applying event for %s failed; kept for replay", envelope.upstream_id)
        reason = f"{type(error).__name__}: {error}"
        event_id = store.batched(
            lambda store: store.insert_event(
                {**row, "verdict": "error", "received_verdict": "error", "reason": reason}
            )
        )
        return Receipt(event_id, "error", reason)


def apply_event(
    store: Store, envelope: Envelope, token: str | None, now: float
) -> tuple[str, str | None]:
    """Apply one parsed event to its job; return (verdict, job id)."""
    if not envelope.known:
        return "ignored", None
    job, by_upstream_id = store.jobs_for_event(token, envelope.upstream_id)
    if job is None:
        job = by_upstream_id
    if job is None:
        return "waiting", None
    if (
        by_upstream_id is not None
        and by_upstream_id["id"] != job["id"]
        or (job["upstream_id"] and job["upstream_id"] != envelope.upstream_id)
    ):
        log.warning("event for %s arrived on the URL of job %s", envelope.upstream_id, job["id"])
        return "mismatch", job["id"]
    seen = jobs.Observation.from_upstream(envelope.data, "callback")
    changed = jobs.apply_observation(store, job, seen, now)
    if not job["upstream_id"]:
        apply_waiting(store, job["id"], now)
    return ("applied" if changed else "unchanged"), job["id"]


def apply_waiting(store: Store, job_id: str, now: float) -> int:
    """Apply events kept for a job before it could be placed; return how many."""
    job = store.job(job_id)
    if job is None:
        return 0
    applied = 0
    for event in store.waiting_events(job["upstream_id"], job["callback_token"]):
        envelope = parse_envelope(event["body"])
        verdict, placed = apply_event(store, envelope, event["callback_token"], now)
        if verdict != "waiting":
            store.update_event(
                event["id"],
                {
                    "verdict": verdict,
                    "job_id": placed,
                    "applied_at": now if verdict in PROCESSED else None,
                },
            )
            applied += verdict in PROCESSED
    return applied


def replay(store: Store, event_id: int, now: float) -> str:
    """Run one stored event through the state machine again; return its new verdict."""
    with store.transaction():
        event = store.event(event_id)
        if event is None:
            raise LookupError(f"no event {event_id}")
        try:
            envelope = parse_envelope(event["body"])
        except EnvelopeError as error:
            store.update_event(event_id, {"verdict": "rejected", "reason": str(error)})
            return "rejected"
        verdict, job_id = apply_event(store, envelope, event["callback_token"], now)
        store.update_event(
            event_id,
            {
                "verdict": verdict,
                "job_id": job_id,
                "reason": None,
                "applied_at": now if verdict in PROCESSED else None,
            },
        )
    return verdict
