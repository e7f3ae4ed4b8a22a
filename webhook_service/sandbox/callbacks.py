"""Signed completion callbacks, sent the way ModelGates does, and misbehaving on request.

One dispatcher thread waits on the sandbox clock (``SandboxState.wakeup``) for jobs
that reach a terminal state, drops or duplicates them as the job says, optionally
holds them briefly to shuffle their order, and hands deliveries to a small thread
pool.  A delivery only ever goes to a loopback host; every attempt is recorded on
the job.  Signatures carry the *wall* clock, so advancing the sandbox clock never
makes them stale for a receiver.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from ..signatures import IDEMPOTENCY_HEADERS, SIGNATURE_HEADERS, sign
from .jobs import Job, callback_event, iso
from .loopback import is_loopback_url
from .state import SandboxState

CALLBACK_TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 0.1
REORDER_WINDOW_SECONDS = 0.3
IDLE_WAIT_SECONDS = 0.5
USER_AGENT = "modelgates-sandbox/1 (development sandbox, not ModelGates)"

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """One callback to send ``copies`` times."""

    job_id: str
    url: str
    body: bytes
    idempotency_key: str
    copies: int


class CallbackDispatcher:
    """Sends the callbacks of jobs as they become terminal on the sandbox clock."""

    def __init__(self, state: SandboxState, secret: str, base_url: str) -> None:
        self.state = state
        self._secret = secret
        self.base_url = base_url
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="sandbox-callback")
        self._thread = threading.Thread(target=self._run, name="sandbox-callbacks", daemon=True)

    def start(self) -> None:
        """Start the dispatcher thread (once)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        """Stop dispatching and abandon deliveries not yet started."""
        self._stop.set()
        with self.state.wakeup:
            self.state.wakeup.notify_all()
        if self._thread.is_alive():
            self._thread.join(2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        held: list[Delivery] = []
        held_since = 0.0
        while not self._stop.is_set():
            with self.state.wakeup:
                due = self.state.pop_due_callbacks()
                if not due and not self._stop.is_set():
                    self.state.wakeup.wait(self._wait_seconds(held_since if held else None))
                    due = self.state.pop_due_callbacks()
            if self._stop.is_set():
                return
            prepared = [delivery for delivery in map(self._prepare, due) if delivery]
            if prepared and not held:
                held_since = time.monotonic()
            held.extend(prepared)
            reorder = self.state.settings.reorder_callbacks
            if not held or (reorder and time.monotonic() - held_since < REORDER_WINDOW_SECONDS):
                continue
            if reorder:
                self.state.shuffle(held)
                self._pool.submit(self._deliver_in_order, held)
            else:
                for delivery in held:
                    self._pool.submit(self._deliver_in_order, [delivery])
            held = []

    def _wait_seconds(self, held_since: float | None) -> float:
        wait = self.state.seconds_until_next_callback()
        seconds = IDLE_WAIT_SECONDS if wait is None else min(max(wait, 0.005), IDLE_WAIT_SECONDS)
        if held_since is not None:
            remaining = REORDER_WINDOW_SECONDS - (time.monotonic() - held_since)
            seconds = min(seconds, max(remaining, 0.005))
        return seconds

    def _prepare(self, job: Job) -> Delivery | None:
        with self.state.lock:
            if job.callback_mode == "drop":
                job.callback_state = "dropped"
                self.state.count("callbacks_dropped")
                return None
            job.callback_state = "sending"
            copies = 2 if job.callback_mode == "duplicate" else 1
            if copies == 2:
                self.state.count("callbacks_duplicated")
            body = json.dumps(callback_event(job, self.base_url), separators=(",", ":")).encode()
            return Delivery(job.id, job.callback_url or "", body, f"{job.id}-{job.outcome}", copies)

    def _deliver_in_order(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            if self._stop.is_set():
                return
            try:
                delivered = self._deliver(delivery)
            except Exception as error:  # a bad CA file, say: record it, keep the pool alive
                log.exception("sandbox: callback for %s crashed", delivery.job_id)
                self._record(delivery, 1, 1, None, f"{type(error).__name__}: {error}")
                self.state.count("callbacks_failed")
                delivered = False
            self._finish(delivery, delivered)

    def _deliver(self, delivery: Delivery) -> bool:
        if not is_loopback_url(delivery.url):
            self._record(delivery, 1, 1, None, "refused: the sandbox only calls loopback addresses")
            self.state.count("callbacks_failed")
            return False
        ca_file = self.state.settings.ca_file
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        with httpx.Client(
            timeout=CALLBACK_TIMEOUT_SECONDS, verify=verify, trust_env=False
        ) as client:
            results = [self._post(client, delivery, copy) for copy in range(1, delivery.copies + 1)]
        return any(results)

    def _post(self, client: httpx.Client, delivery: Delivery, copy: int) -> bool:
        attempts = self.state.settings.callback_attempts
        for attempt in range(1, attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                SIGNATURE_HEADERS[0]: sign(self._secret, int(time.time()), delivery.body),
                IDEMPOTENCY_HEADERS[0]: delivery.idempotency_key,
            }
            self.state.count("callback_attempts")
            try:
                response = client.post(delivery.url, content=delivery.body, headers=headers)
            except httpx.HTTPError as error:
                self._record(delivery, copy, attempt, None, f"{type(error).__name__}: {error}")
            else:
                self._record(delivery, copy, attempt, response.status_code, None)
                if response.is_success:
                    self.state.count("callbacks_sent")
                    return True
            if attempt < attempts and self._stop.wait(BACKOFF_SECONDS * 2 ** (attempt - 1)):
                return False
        self.state.count("callbacks_failed")
        return False

    def _record(
        self, delivery: Delivery, copy: int, attempt: int, status: int | None, error: str | None
    ) -> None:
        entry: dict[str, Any] = {
            "at": iso(time.time()),
            "delivery": copy,
            "attempt": attempt,
            "status": status,
            "error": error,
        }
        with self.state.lock:
            job = self.state.jobs.get(delivery.job_id)
            if job is not None:
                job.callback_attempts.append(entry)
        log.info("sandbox: callback %s -> %s", delivery.idempotency_key, error or status)

    def _finish(self, delivery: Delivery, delivered: bool) -> None:
        with self.state.lock:
            job = self.state.jobs.get(delivery.job_id)
            if job is not None:
                job.callback_state = "delivered" if delivered else "failed"
