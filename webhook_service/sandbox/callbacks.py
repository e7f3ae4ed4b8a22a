"""Signed completion callbacks, delivered the way ModelGates does (and misbehaves)."""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..signatures import sign
from .state import TERMINAL, Job, State, job_object

TICK_SECONDS = 0.05


def is_loopback(url: str) -> bool:
    """Answer whether a URL points at this machine: the only place the sandbox calls."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def envelope(job: Job, status: str, base_url: str) -> bytes:
    """The callback body for a terminal job."""
    data = job_object(job, status, base_url)
    data.pop("polling_url")
    data["model"] = job.model
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"type": f"video.generation.{status}", "created_at": created, "data": data}
    return json.dumps(body, separators=(",", ":")).encode()


class CallbackSender:
    """Watches the clock and posts callbacks for jobs that reached a terminal status."""

    def __init__(self, state: State, secret: str, base_url: str) -> None:
        self.state = state
        self.secret = secret
        self.base_url = base_url
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="sandbox-callback")
        self._thread = threading.Thread(target=self._loop, name="sandbox-clock", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and abandon queued deliveries."""
        self._stop.set()
        self._thread.join(2)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            due = self._due()
            if self.state.settings.reorder_callbacks and len(due) > 1:
                self.state.random.shuffle(due)
            for job, copies in due:
                for copy in range(copies):
                    self._pool.submit(self._deliver, job, copy)

    def _due(self) -> list[tuple[Job, int]]:
        due = []
        with self.state.lock:
            for job in self.state.jobs.values():
                if job.callback_scheduled or self.state.status(job) not in TERMINAL:
                    continue
                job.callback_scheduled = True
                if not job.callback_url:
                    continue
                settings = self.state.settings
                if job.callback == "drop" or (
                    job.callback == "deliver" and self.state.chance(settings.drop_callbacks)
                ):
                    self.state.stats["callbacks_dropped"] += 1
                    job.callback_attempts.append({"dropped": True})
                    continue
                duplicate = job.callback == "duplicate" or self.state.chance(
                    settings.duplicate_callbacks
                )
                due.append((job, 2 if duplicate else 1))
        return due

    def _deliver(self, job: Job, copy: int) -> None:
        settings = self.state.settings
        delay = settings.callback_delay_seconds + (0.05 * copy)
        if settings.reorder_callbacks:
            delay += self.state.random.random() * 0.3
        if delay:
            time.sleep(delay)
        url = job.callback_url or ""
        if not is_loopback(url):
            self._record(job, {"error": "refused: the sandbox only calls loopback addresses"})
            return
        status = self.state.status(job)
        body = envelope(job, status, self.base_url)
        verify: Any = (
            ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True
        )
        for attempt in range(max(1, settings.callback_attempts)):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "modelgates-sandbox/1",
                "X-OpenRouter-Signature": sign(self.secret, int(time.time()), body),
                "X-OpenRouter-Idempotency-Key": f"{job.id}-{status}",
            }
            try:
                response = httpx.post(url, content=body, headers=headers, timeout=10, verify=verify)
            except httpx.HTTPError as error:
                self._record(job, {"attempt": attempt, "error": f"{type(error).__name__}: {error}"})
            else:
                self._record(job, {"attempt": attempt, "status": response.status_code})
                if response.is_success:
                    self.state.stats["callbacks_sent"] += 1
                    return
            if self._stop.wait(0.2 * 2**attempt):
                return
        self.state.stats["callbacks_failed"] += 1

    def _record(self, job: Job, attempt: dict[str, Any]) -> None:
        with self.state.lock:
            job.callback_attempts.append(attempt)
