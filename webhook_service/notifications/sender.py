"""The worker's side of notifications: one attempt per claimed delivery, never twice.

A claimed notification is sent only after its attempt number is recorded under
the claim's fence (`Store.begin_notification_attempt`): a worker whose claim was
taken over, or that races another for the same attempt, sends nothing.  The body
is the one stored when the job settled; the signature is made fresh at each
attempt, since receivers refuse signatures older than five minutes.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable
from typing import Any

import httpx

from ..addresses import Resolver
from ..config import Settings
from ..store import Store
from .delivery import DEFAULT_TIMEOUT_SECONDS, Attempt, deliver
from .events import next_delay, sign

log = logging.getLogger(__name__)


class Sender:
    """Sends claimed notifications for one worker."""

    def __init__(
        self,
        settings: Settings,
        owner: str,
        *,
        clock: Callable[[], float],
        rand: Callable[[], float] = random.random,
        resolve: Resolver = socket.getaddrinfo,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.settings = settings
        self.owner = owner
        self.clock = clock
        self.rand = rand
        self.resolve = resolve
        self.timeout = timeout
        # Loading the CA bundle costs more than a whole attempt: once per worker.
        self.ssl_context = httpx.create_ssl_context()

    @property
    def enabled(self) -> bool:
        """Whether notifications can be signed (NOTIFY_SIGNING_SECRET is set)."""
        return self.settings.notify_signing_secret is not None

    def send(self, store: Store, claim: dict[str, Any]) -> Attempt | None:
        """Make the claimed notification's next attempt; None when it was not ours to make."""
        job_id, fence = claim["job_id"], claim["fence"]
        number = claim["sent"] + 1
        if not store.begin_notification_attempt(job_id, fence, number, self.owner, self.clock()):
            log.info("notification of %s: attempt %d is not ours to make", job_id, number)
            return None
        assert self.settings.notify_signing_secret is not None
        secret, body = self.settings.notify_signing_secret, bytes(claim["body"])
        headers = sign(secret, claim["webhook_id"], int(self.clock()), body)
        attempt = deliver(
            claim["url"],
            headers,
            body,
            timeout=self.timeout,
            allow_private=self.settings.allow_private_notify_urls,
            allow_http=self.settings.allow_insecure_callbacks,
            resolve=self.resolve,
            ssl_context=self.ssl_context,
        )
        now = self.clock()
        store.end_notification_attempt(
            job_id,
            number,
            {"finished_at": now, "status_code": attempt.status_code, "error": attempt.error},
        )
        changes: dict[str, Any] = {
            "attempts": claim["attempts"] + 1,
            "last_status": attempt.status_code,
            "last_error": attempt.error,
            "updated_at": now,
        }
        if attempt.delivered:
            changes.update(status="delivered", next_attempt_at=None, delivered_at=now)
        else:
            delay = (
                None
                if attempt.gone
                else next_delay(changes["attempts"], attempt.retry_after, self.rand)
            )
            if delay is None:
                changes.update(status="failed", next_attempt_at=None)
            else:
                changes.update(status="pending", next_attempt_at=now + delay)
        if not store.finish_notification_claim(job_id, fence, changes):
            log.warning("notification of %s: claim lost after attempt %d", job_id, number)
        outcome = changes["status"]
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(
            level,
            "notification of %s attempt %d: %s (%s)",
            job_id,
            number,
            outcome if outcome != "pending" else "will retry",
            attempt.status_code or attempt.error,
        )
        return attempt
