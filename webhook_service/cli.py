"""The ``webhook-service`` command: processes, migrations, operator tools, the sandbox."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType

import click
import httpx

from . import events
from .config import ConfigError, load_dotenv_file, load_settings
from .logs import redact
from .notifications.commands import notifications_group, send_sample
from .sandbox.cli import sandbox_command
from .signatures import sign
from .store import Store, open_store

STOP_DEADLINE_SECONDS = 8.0
RELEASE_SECONDS = 0.5


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate webhook_service: ModelGates video jobs that are never lost."""


@contextmanager
def _store() -> Iterator[Store]:
    settings = load_settings()
    if settings.database_url is None:  # PostgreSQL leaves the working directory untouched
        settings.database_path.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    try:
        store.migrate()
        yield store
    finally:
        store.close()


@cli.command()
def migrate() -> None:
    """Apply pending database migrations (the Procfile's release step)."""
    with _store() as store:
        click.echo(f"database ready: {store.describe()}")


@cli.command()
@click.option("--concurrency", default=4, show_default=True, help="Downloads at once.")
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=5),
    help="How long a claim holds before another worker may take it over "
    "(default: WORKER_LEASE_SECONDS, else 60).",
)
def worker(concurrency: int, lease_seconds: float | None) -> None:
    """Poll jobs whose callback is overdue and download outputs, until SIGTERM."""
    from . import prepare
    from .logs import configure
    from .modelgates import client_for
    from .worker import Worker

    # No Flask app here: the worker needs none of the web edge (a smaller process).
    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    if settings.modelgates_api_key is None:
        raise ConfigError("MODELGATES_API_KEY is required to run the worker")
    media = prepare(settings, os.environ)
    runner = Worker(
        settings,
        client_for(settings),
        concurrency=concurrency,
        lease_seconds=lease_seconds or settings.worker_lease_seconds,
        media=media,
    )

    def hard_stop() -> None:
        # Release what we hold if the database lets us at once; leave on time regardless
        # (claims that stay are taken over when their leases run out).
        releasing = threading.Thread(
            target=runner.store.release_claims, args=(runner.owner,), daemon=True
        )
        releasing.start()
        releasing.join(RELEASE_SECONDS)
        os._exit(0)

    def stop(signum: int, frame: FrameType | None) -> None:
        runner.stop()
        # Platforms kill after ~30 s; whatever is still blocked (a poll in a slow read)
        # must not keep us past 10 s: release every claim we hold, then leave.
        watchdog = threading.Timer(STOP_DEADLINE_SECONDS, hard_stop)
        watchdog.daemon = True
        watchdog.start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.run()
    # Claims are released and everything durable is in the database: leave now rather
    # than wait for a thread stuck in a read (a slow download or notification).
    logging.shutdown()
    os._exit(0)


@cli.group("events")
def events_group() -> None:
    """Inspect and replay stored webhook deliveries."""


@events_group.command("list")
@click.option("--verdict", help="applied, waiting, ignored, mismatch, rejected or error.")
@click.option("--job", "job_id", help="Only events applied to this service job id.")
@click.option("--upstream-id", help="Only events for this ModelGates job id.")
@click.option("--since-minutes", type=float, help="Only events received this recently.")
@click.option("--limit", default=50, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with bodies.")
def list_events(
    verdict: str | None,
    job_id: str | None,
    upstream_id: str | None,
    since_minutes: float | None,
    limit: int,
    as_json: bool,
) -> None:
    """List stored webhook events."""
    since = time.time() - since_minutes * 60 if since_minutes is not None else None
    with _store() as store:
        rows = store.list_events(verdict, job_id, upstream_id, since, limit)
    for row in rows:
        received = datetime.fromtimestamp(row["received_at"], UTC).isoformat(timespec="seconds")
        if as_json:
            # The callback token is a bearer secret for one job's receiver URL: never shown.
            row = dict(
                row,
                body=bytes(row["body"]).decode("utf-8", "replace"),
                received_at=received,
                url=redact(row["url"] or "") or None,
                callback_token="…" if row["callback_token"] else None,
            )
            click.echo(json.dumps(row, sort_keys=True))
        else:
            click.echo(
                f"{row['id']:>6}  {received}  {row['verdict']:<9} {row['event_type'] or '-':<28}"
                f" {row['upstream_id'] or '-':<24} {row['job_id'] or '-'}"
                + (f"  ({row['reason']})" if row["reason"] else "")
            )


@events_group.command("replay")
@click.argument("event_ids", nargs=-1, type=int)
@click.option("--verdict", help="Replay every event with this verdict (e.g. waiting, error).")
def replay_events(event_ids: tuple[int, ...], verdict: str | None) -> None:
    """Run stored events through the state machine again (after a fix, say)."""
    if not event_ids and not verdict:
        raise click.UsageError("name event ids or a --verdict")
    with _store() as store:
        ids = list(event_ids)
        if verdict:
            ids += [row["id"] for row in store.list_events(verdict=verdict, limit=-1)]
        for event_id in sorted(ids):
            try:
                outcome = events.replay(store, event_id, time.time())
            except LookupError as error:
                raise click.ClickException(str(error)) from None
            click.echo(f"event {event_id}: {outcome}")


cli.add_command(notifications_group(_store))


@cli.command("send-test-event")
@click.argument("url")
@click.option(
    "--job-id",
    default="job-test-0001",
    show_default=True,
    help="The ModelGates job id the event is about.",
)
@click.option(
    "--status",
    default="completed",
    show_default=True,
    type=click.Choice(["completed", "failed", "cancelled", "expired"]),
)
@click.option("--outputs", default=1, show_default=True, help="unsigned_urls to list.")
@click.option(
    "--secret",
    envvar="MODELGATES_WEBHOOK_SECRETS",
    help="Signing secret (default: the first of MODELGATES_WEBHOOK_SECRETS).",
)
@click.option(
    "--brand",
    type=click.Choice(["openrouter", "modelgates"]),
    default="openrouter",
    show_default=True,
    help="Which spelling of the headers to send.",
)
@click.option(
    "--notification",
    is_flag=True,
    help="Send a sample job notification instead, signed as this service signs them"
    " (Standard Webhooks), to test your own app's endpoint.",
)
@click.option(
    "--notify-secret",
    help="With --notification: the whsec_ secret (default: NOTIFY_SIGNING_SECRET).",
)
def send_test_event(
    url: str,
    job_id: str,
    status: str,
    outputs: int,
    secret: str | None,
    brand: str,
    notification: bool,
    notify_secret: str | None,
) -> None:
    """Sign a sample event exactly as ModelGates does and POST it to URL.

    With --notification, sign a sample notification exactly as this service sends
    them to clients' apps, and POST it to URL.
    """
    if notification:
        status_code, error = send_sample(load_settings(), url, notify_secret)
        click.echo(f"{status_code or '-'} {error}".rstrip())
        if status_code is None or not 200 <= status_code < 300:
            sys.exit(1)
        return
    if not secret:
        raise click.UsageError("give --secret or set MODELGATES_WEBHOOK_SECRETS")
    secret = secret.split(",")[0].strip()
    data: dict[str, object] = {
        "id": job_id,
        "status": status,
        "generation_id": None,
        "model": "google/veo-3.1",
    }
    if status == "completed":
        data["unsigned_urls"] = [
            f"https://modelgates.ai/api/v1/videos/{job_id}/content?index={n}"
            for n in range(outputs)
        ]
        data["usage"] = {"cost": 0.0, "is_byok": False}
    else:
        data["error"] = f"test event: job {status}"
    now = datetime.now(UTC)
    body = json.dumps(
        {
            "type": f"video.generation.{status}",
            "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": data,
        },
        separators=(",", ":"),
    ).encode()
    prefix = "X-OpenRouter" if brand == "openrouter" else "X-ModelGates"
    headers = {
        "Content-Type": "application/json",
        f"{prefix}-Signature": sign(secret, int(now.timestamp()), body),
        f"{prefix}-Idempotency-Key": f"{job_id}-{status}",
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as error:
        raise click.ClickException(f"could not deliver: {error}") from None
    click.echo(f"{response.status_code} {response.reason_phrase} {response.text[:200]}".rstrip())
    if response.status_code >= 300:
        sys.exit(1)


@cli.command()
def status() -> None:
    """Summarise jobs by status, work due, the oldest stuck work and the last callback."""
    now = time.time()
    with _store() as store:
        counts = store.count_jobs_by_status()
        due = store.metrics(now, ())["due"]
        oldest = store.oldest_work(now)
        click.echo(f"database: {store.describe()}")
    by_status = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
    click.echo(f"jobs: {sum(counts.values())}" + (f" ({by_status})" if by_status else ""))
    click.echo(
        f"due now: {due['polls']} polls, {due['downloads']} downloads,"
        f" {due['notifications']} notifications"
    )
    job, output, notification = oldest["job"], oldest["output"], oldest["notification"]
    click.echo(
        "oldest unfinished job: "
        + (f"{job['id']} {job['status']}, {_since(job['created_at'], now)}" if job else "none")
    )
    click.echo(
        "oldest download: "
        + (
            f"{output['job_id']}/{output['idx']} {output['status']},"
            f" {output['attempts']} failed attempts, {_since(output['created_at'], now)}"
            + (f": {output['error']}" if output["error"] else "")
            if output
            else "none"
        )
    )
    click.echo(
        "oldest pending notification: "
        + (
            f"{notification['job_id']}, {notification['attempts']} attempts,"
            f" {_since(notification['created_at'], now)}"
            if notification
            else "none"
        )
    )
    last = oldest["last_callback_at"]
    click.echo("last callback received: " + (_since(last, now) if last is not None else "never"))


def _since(moment: float, now: float) -> str:
    """``<ISO time> (<how long> ago)`` for a terminal line."""
    seconds = max(0, int(now - moment))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    ago = f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s"
    stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
    return f"since {stamp} ({ago} ago)"


@cli.command()
@click.option("--keep", is_flag=True, help="Leave everything running and print the URLs.")
@click.option(
    "--procfile",
    "print_procfile",
    is_flag=True,
    help="Print the service's Procfile (for honcho or a platform) and exit.",
)
def demo(keep: bool, print_procfile: bool) -> None:
    """Run sandbox, web and worker on loopback and push a handful of jobs through."""
    from .demo import DEFAULT_PROCFILE, run

    if print_procfile:
        for name, command in DEFAULT_PROCFILE.items():
            click.echo(f"{name}: {command}")
        return
    sys.exit(run(keep, click.echo))


cli.add_command(sandbox_command, "sandbox")


def main() -> None:
    """Entry point: run the CLI, turning configuration errors into one line."""
    load_dotenv_file()
    try:
        cli.main(standalone_mode=True)
    except ConfigError as error:
        click.echo(f"webhook-service: configuration error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
