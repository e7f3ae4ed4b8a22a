"""``webhook-service notifications …``: see what was sent to clients' apps, send again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import click

from ..config import Settings
from ..store import Store
from .delivery import deliver
from .events import build_event, sign

OpenStore = Callable[[], AbstractContextManager[Store]]

SAMPLE_JOB: dict[str, Any] = {
    "id": "vj_test000000000000000000",
    "upstream_id": "job-test-0001",
    "status": "completed",
    "model": "google/veo-3.1",
    "prompt": "a test notification",
    "params": {"model": "google/veo-3.1", "prompt": "a test notification"},
    "error": None,
    "generation_id": None,
    "cost": 0.0,
    "completion_source": "callback",
    "outputs": [
        {
            "index": 0,
            "status": "downloaded",
            "bytes": 0,
            "sha256": None,
            "error": None,
            "url": "/api/jobs/vj_test000000000000000000/videos/0",
        }
    ],
    "settled": True,
    "notify_url": None,
    "notification": {"status": "pending", "attempts": 0, "last_status": None, "last_error": None},
}


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def notifications_group(open_store: OpenStore) -> click.Group:
    """Build the ``notifications`` command group around a store opener."""

    @click.group("notifications")
    def group() -> None:
        """Inspect and resend the notifications sent to clients' apps."""

    @group.command("list")
    @click.option("--status", type=click.Choice(["pending", "delivered", "failed"]))
    @click.option("--job", "job_id", help="Only this service job id.")
    @click.option("--limit", default=50, show_default=True, help="How many, newest first.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    def list_notifications(
        status: str | None, job_id: str | None, limit: int, as_json: bool
    ) -> None:
        """List notifications newest first, with their last answer."""
        with open_store() as store:
            rows = store.list_notifications(status, job_id, limit)
            attempts = {row["job_id"]: store.notification_attempts(row["job_id"]) for row in rows}
        for row in rows:
            if as_json:
                shown = {k: v for k, v in row.items() if k not in ("body", "lease_owner")}
                shown["attempt_log"] = attempts[row["job_id"]]
                click.echo(json.dumps(shown, sort_keys=True, default=str))
                continue
            last = row["last_status"] or row["last_error"] or "-"
            click.echo(
                f"{row['job_id']}  {row['status']:<9} {row['event_type']:<20} sent {row['sent']}"
                f"  last {str(last)[:60]}  next {_when(row['next_attempt_at'])}  {row['url']}"
            )

    @group.command("resend")
    @click.argument("job_id")
    def resend(job_id: str) -> None:
        """Send a job's notification again now, with a fresh retry schedule."""
        with open_store() as store:
            if not store.resend_notification(job_id, time.time()):
                raise click.ClickException(
                    f"job {job_id} has no notification (unknown job, not settled yet,"
                    " or submitted without notify_url)"
                )
        click.echo(f"notification of {job_id} is due now; the worker sends it")

    return group


def send_sample(settings: Settings, url: str, secret: str | None) -> tuple[int | None, str]:
    """Sign a sample ``job.completed`` notification and POST it to ``url`` once."""
    secret = secret or settings.notify_signing_secret
    if not secret:
        raise click.UsageError("give --secret or set NOTIFY_SIGNING_SECRET")
    now = time.time()
    webhook_id, body = build_event(dict(SAMPLE_JOB, notify_url=url), now)
    attempt = deliver(
        url,
        sign(secret, webhook_id, int(now), body),
        body,
        allow_private=settings.allow_private_notify_urls,
        allow_http=settings.allow_insecure_callbacks,
    )
    return attempt.status_code, attempt.error or ""
