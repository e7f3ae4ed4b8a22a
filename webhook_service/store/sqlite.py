"""The SQLite engine: every SQL statement the service runs on it (schema: sqlite_schema).

One `Store` wraps one connection (sqlite-utils `Database`).  WAL, a busy timeout
and `synchronous=FULL` are set when it opens, so a committed row survives a power
cut and several gunicorn workers plus worker processes can write at once.  Writes
that read-then-write run inside `transaction()` (`BEGIN IMMEDIATE`), which takes
the write lock up front: SQLite never has to abort one of two upgrading readers.

Times are Unix seconds (REAL); JSON columns hold text.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from .base import Row, Store, StoreUnavailable, T, where
from .sqlite_schema import migrations
from .wakeups import Doorbell, folder_for, ring
from .writers import GroupCommit, WriteLock

BUSY_TIMEOUT_MS = 10_000
CHANGE_CHECK_SECONDS = 0.05
"""How often an idle worker looks at ``PRAGMA data_version``, behind its doorbell."""


class SqliteStore(Store):
    """The store on one SQLite file, through one connection (one per thread)."""

    def __init__(
        self,
        path: Path | str,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        change_check_seconds: float = CHANGE_CHECK_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.change_check_seconds = change_check_seconds
        self._wake_folder = folder_for(self.path)
        self._doorbell: Doorbell | None = None
        self._work_became_due = False
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.OperationalError as error:  # a folder in its place, no permission
            raise StoreUnavailable(f"SQLite file {self.path}: {error}") from error
        conn.row_factory = sqlite3.Row
        self.db = sqlite_utils.Database(conn, execute_plugins=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._write_lock = WriteLock.for_database(self.path)
        self._busy_timeout = busy_timeout_ms / 1000

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    def describe(self) -> str:
        """Say which database this is, for people."""
        return f"SQLite file {self.path}"

    def close(self) -> None:
        """Close the connection (and stop listening for wake-ups)."""
        if self._doorbell is not None:
            self._doorbell.close()
        self.db.close()

    def migrate(self) -> list[str]:
        """Create the file's folder, switch to WAL and apply pending migrations."""
        self.db.enable_wal()
        # Under the write lock: web workers and the worker process may start together.
        with self.transaction():
            pending = [m.name for m in migrations.pending(self.db)]
            migrations.apply(self.db)
        return pending

    def ping(self) -> bool:
        """Answer whether the database is readable and migrated."""
        try:
            self.db.conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return True

    @contextmanager
    def transaction(self) -> Iterator[SqliteStore]:
        """Run a block under BEGIN IMMEDIATE, queued on the WriteLock; nested: a savepoint."""
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield self
            return
        if not self._write_lock.acquire(self._busy_timeout):
            raise StoreUnavailable(f"SQLite: {self.path} stayed locked by another process")
        self._work_became_due = False
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
                self.db.conn.execute("COMMIT")
            except BaseException:
                self.db.rollback()  # also when COMMIT itself failed: never leave one open
                raise
        except sqlite3.OperationalError as error:  # locked past the timeout, disk I/O
            raise StoreUnavailable(f"SQLite: {error}") from error
        finally:
            self._write_lock.release()
        if self._work_became_due:
            self._wake_workers()

    def batched(self, work: Callable[[Store], T]) -> T:
        """Run a short write in a transaction shared with other threads' writes."""
        return GroupCommit.for_database(self.path).run(self, work)

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.db.conn.execute(sql, list(params))
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"SQLite: {error}") from error

    def _one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        row = self._execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return [dict(row) for row in self._execute(sql, params).fetchall()]

    def _update(self, table: str, where: str, params: list[Any], changes: Mapping[str, Any]) -> int:
        if not changes:
            return 0
        columns = ", ".join(f"{name} = ?" for name in changes)
        cursor = self._execute(
            f"UPDATE {table} SET {columns} WHERE {where}", [*changes.values(), *params]
        )
        return cursor.rowcount

    # Jobs ---------------------------------------------------------------

    def insert_job(self, job: Mapping[str, Any]) -> None:
        """Insert a new job row (params given as a dict)."""
        row = dict(job, params=json.dumps(job["params"], sort_keys=True))
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self._execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(row.values()))

    def job(self, job_id: str) -> Row | None:
        """Return the job with our id, or None."""
        return self._one("SELECT * FROM jobs WHERE id = ?", [job_id])

    def job_by_idempotency_key(self, client: str, key: str) -> Row | None:
        """Return the job a client submitted under an Idempotency-Key."""
        return self._one(
            "SELECT * FROM jobs WHERE client = ? AND idempotency_key = ?", [client, key]
        )

    def jobs_for_event(self, token: str | None, upstream_id: str) -> tuple[Row | None, Row | None]:
        """Return (the job with this callback token, the job with this upstream id)."""
        rows = self._all(
            "SELECT * FROM jobs WHERE callback_token = ? OR upstream_id = ?", [token, upstream_id]
        )
        by_token = next((row for row in rows if token and row["callback_token"] == token), None)
        by_upstream = next((row for row in rows if row["upstream_id"] == upstream_id), None)
        return by_token, by_upstream

    def update_job(self, job_id: str, changes: Mapping[str, Any]) -> None:
        """Set columns of one job."""
        self._update("jobs", "id = ?", [job_id], changes)

    def list_jobs(self, status: str | None, limit: int, before_seq: int | None) -> list[Row]:
        """Return jobs newest first, optionally filtered, older than ``before_seq``."""
        clause, params = where([("status = ?", status), ("seq < ?", before_seq)])
        return self._all(f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ?", [*params, limit])

    def count_jobs_by_status(self) -> dict[str, int]:
        """Return how many jobs are in each status."""
        rows = self._execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    # Outputs ------------------------------------------------------------

    def create_outputs(self, job_id: str, count: int, now: float) -> None:
        """Create output rows 0..count-1 for a job, due for download now."""
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO outputs (job_id, idx, next_attempt_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(job_id, index, now, now, now) for index in range(count)],
        )
        self._due_now()

    def _due_now(self) -> None:
        """Work became due: ring the idle workers' doorbells once it is committed."""
        if self.db.conn.in_transaction:
            self._work_became_due = True
        else:
            self._wake_workers()

    def _wake_workers(self) -> None:
        self._work_became_due = False
        ring(self._wake_folder)

    def outputs(self, job_ids: Iterable[str]) -> dict[str, list[Row]]:
        """Return each job's outputs by index, for many jobs in one query."""
        ids = list(job_ids)
        found: dict[str, list[Row]] = {job_id: [] for job_id in ids}
        if not ids:
            return found
        marks = ", ".join("?" for _ in ids)
        for row in self._all(
            f"SELECT * FROM outputs WHERE job_id IN ({marks}) ORDER BY job_id, idx", ids
        ):
            found[row["job_id"]].append(row)
        return found

    def output(self, job_id: str, index: int) -> Row | None:
        """Return one output row."""
        return self._one("SELECT * FROM outputs WHERE job_id = ? AND idx = ?", [job_id, index])

    def update_output(
        self, job_id: str, index: int, changes: Mapping[str, Any], fence: int | None = None
    ) -> bool:
        """Set columns of one output; with ``fence``, only if that claim still holds."""
        where, params = "job_id = ? AND idx = ?", [job_id, index]
        if fence is not None:
            where += " AND fence = ?"
            params.append(fence)
        return self._update("outputs", where, params, changes) == 1

    # Webhook events -------------------------------------------------------

    def insert_event(self, event: Mapping[str, Any]) -> int | None:
        """Store an event; return its id, or None when its dedup key is already stored."""
        columns = ", ".join(event)
        marks = ", ".join("?" for _ in event)
        cursor = self._execute(
            f"INSERT INTO events ({columns}) VALUES ({marks}) ON CONFLICT (dedup_key) DO NOTHING",
            list(event.values()),
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def update_event(self, event_id: int, changes: Mapping[str, Any]) -> None:
        """Set columns of one stored event."""
        self._update("events", "id = ?", [event_id], changes)

    def event(self, event_id: int) -> Row | None:
        """Return one stored event."""
        return self._one("SELECT * FROM events WHERE id = ?", [event_id])

    def waiting_events(self, upstream_id: str | None, token: str) -> list[Row]:
        """Return events kept for a job that did not exist (or had no upstream id) yet."""
        return self._all(
            "SELECT * FROM events WHERE verdict = 'waiting' AND (callback_token = ?"
            " OR upstream_id = ?) ORDER BY id",
            [token, upstream_id],
        )

    def list_events(
        self,
        verdict: str | None = None,
        job_id: str | None = None,
        upstream_id: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[Row]:
        """Return stored events newest first, filtered."""
        clause, params = where(
            [
                ("verdict = ?", verdict),
                ("job_id = ?", job_id),
                ("upstream_id = ?", upstream_id),
                ("received_at >= ?", since),
            ]
        )
        return self._all(
            f"SELECT * FROM events {clause} ORDER BY id DESC LIMIT ?", [*params, limit]
        )

    def count_events(self) -> int:
        """Return how many events are stored."""
        return int(self._execute("SELECT count(*) FROM events").fetchone()[0])

    # Notifications ------------------------------------------------------------

    def insert_notification(self, notification: Mapping[str, Any]) -> bool:
        """Queue a job's notification; False when the job already has one."""
        columns = ", ".join(notification)
        marks = ", ".join("?" for _ in notification)
        cursor = self._execute(
            f"INSERT INTO notifications ({columns}) VALUES ({marks})"
            " ON CONFLICT (job_id) DO NOTHING",
            list(notification.values()),
        )
        if cursor.rowcount != 1:
            return False
        self._due_now()
        return True

    def notifications(self, job_ids: Iterable[str]) -> dict[str, Row]:
        """Return the notifications of many jobs, by job id."""
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        rows = self._all(f"SELECT * FROM notifications WHERE job_id IN ({marks})", ids)
        return {row["job_id"]: row for row in rows}

    def list_notifications(
        self, status: str | None = None, job_id: str | None = None, limit: int = 50
    ) -> list[Row]:
        """Return notifications newest first, filtered."""
        clause, params = where([("status = ?", status), ("job_id = ?", job_id)])
        return self._all(
            f"SELECT * FROM notifications {clause} ORDER BY created_at DESC, job_id LIMIT ?",
            [*params, limit],
        )

    def begin_notification_attempt(
        self, job_id: str, fence: int, attempt: int, owner: str, now: float
    ) -> bool:
        """Record that attempt ``attempt`` (``sent`` + 1) goes out now.

        False when the claim was lost or that attempt was already made: no attempt
        is ever sent twice, whichever workers race for it.
        """
        with self.transaction():
            held = self._one(
                "SELECT 1 FROM notifications WHERE job_id = ? AND fence = ?", [job_id, fence]
            )
            if held is None:
                return False
            self._execute("UPDATE notifications SET sent = ? WHERE job_id = ?", [attempt, job_id])
            cursor = self._execute(
                "INSERT INTO notification_attempts (job_id, attempt, owner, started_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (job_id, attempt) DO NOTHING",
                [job_id, attempt, owner, now],
            )
            return cursor.rowcount == 1

    def end_notification_attempt(
        self, job_id: str, attempt: int, changes: Mapping[str, Any]
    ) -> None:
        """Record how an attempt ended (``finished_at``, ``status_code``, ``error``)."""
        self._update(
            "notification_attempts", "job_id = ? AND attempt = ?", [job_id, attempt], changes
        )

    def notification_attempts(self, job_id: str) -> list[Row]:
        """Return a job's notification attempts, oldest first."""
        return self._all(
            "SELECT * FROM notification_attempts WHERE job_id = ? ORDER BY attempt", [job_id]
        )

    def resend_notification(self, job_id: str, now: float) -> bool:
        """Make a job's notification due again now, with a fresh retry schedule.

        ``attempts`` (the schedule's position) starts over; ``sent`` and the attempt
        history keep counting, so attempt numbers stay unique.
        """
        with self.transaction():
            changes = {
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "updated_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
            }
            columns = ", ".join(f"{name} = ?" for name in changes)
            cursor = self._execute(
                f"UPDATE notifications SET {columns}, fence = fence + 1 WHERE job_id = ?",
                [*changes.values(), job_id],
            )
            if cursor.rowcount != 1:
                return False
            self._due_now()
            return True

    # Work claiming (worker) ---------------------------------------------------

    def claim_due_jobs(self, owner: str, now: float, until: float, limit: int) -> list[Row]:
        """Lease up to ``limit`` jobs whose poll is due; each claim bumps the job's fence."""
        return self._claim("jobs", "id", "next_poll_at", owner, now, until, limit)

    def claim_due_outputs(self, owner: str, now: float, until: float, limit: int) -> list[Row]:
        """Lease up to ``limit`` outputs whose download is due."""
        return self._claim("outputs", "rowid", "next_attempt_at", owner, now, until, limit)

    def _claim(
        self, table: str, key: str, due: str, owner: str, now: float, until: float, limit: int
    ) -> list[Row]:
        # The due column's partial index makes this a range scan of due rows only.
        with self.transaction():
            return self._all(
                f"UPDATE {table} SET lease_owner = ?, lease_expires_at = ?, fence = fence + 1"
                f" WHERE {key} IN (SELECT {key} FROM {table} WHERE {due} <= ?"
                "   AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
                f"   ORDER BY {due} LIMIT ?) RETURNING *",
                [owner, until, now, now, limit],
            )

    def claim_due_notifications(
        self, owner: str, now: float, until: float, limit: int
    ) -> list[Row]:
        """Lease up to ``limit`` notifications whose next attempt is due."""
        return self._claim("notifications", "job_id", "next_attempt_at", owner, now, until, limit)

    def finish_notification_claim(
        self, job_id: str, fence: int, changes: Mapping[str, Any]
    ) -> bool:
        """Release a delivery claim, setting ``changes``; False when the claim was lost."""
        released = {**changes, "lease_owner": None, "lease_expires_at": None}
        with self.transaction():
            where = "job_id = ? AND fence = ?"
            return self._update("notifications", where, [job_id, fence], released) == 1

    def renew_job_lease(self, job_id: str, fence: int, until: float) -> bool:
        """Extend a poll's lease; False when a newer claim took it over."""
        with self.transaction():
            changes = {"lease_expires_at": until}
            return self._update("jobs", "id = ? AND fence = ?", [job_id, fence], changes) == 1

    def renew_output_lease(self, job_id: str, index: int, fence: int, until: float) -> bool:
        """Extend a download's lease; False when a newer claim took it over."""
        with self.transaction():
            return self.update_output(job_id, index, {"lease_expires_at": until}, fence)

    def finish_job_claim(self, job_id: str, fence: int, changes: Mapping[str, Any]) -> bool:
        """Release a poll claim, setting ``changes``; False when the claim was lost."""
        released = {**changes, "lease_owner": None, "lease_expires_at": None}
        with self.transaction():
            return self._update("jobs", "id = ? AND fence = ?", [job_id, fence], released) == 1

    def finish_output_claim(
        self, job_id: str, index: int, fence: int, changes: Mapping[str, Any]
    ) -> bool:
        """Release a download claim, setting ``changes``; False when the claim was lost."""
        released = {**changes, "lease_owner": None, "lease_expires_at": None}
        with self.transaction():
            return self.update_output(job_id, index, released, fence)

    def release_claims(self, owner: str) -> None:
        """Give up every claim ``owner`` holds, so other workers can take the work at once."""
        with self.transaction():
            self._execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?",
                [owner],
            )
            self._execute(
                "UPDATE outputs SET lease_owner = NULL, lease_expires_at = NULL, status = 'pending'"
                " WHERE lease_owner = ? AND status = 'downloading'",
                [owner],
            )
            self._execute(
                "UPDATE notifications SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE lease_owner = ?",
                [owner],
            )

    def wait_for_change(self, timeout: float, stop: Callable[[], bool]) -> bool:
        """Sleep until work becomes due elsewhere; False at the timeout or when stopped.

        A commit that made work due rings this waiter's doorbell (`wakeups`) at
        once.  Behind it, ``PRAGMA data_version`` (it moves when another connection
        commits; reading it touches only the shared-memory WAL index) is checked
        every ``change_check_seconds``, which also covers a lost ring.
        """
        if self._doorbell is None:
            self._doorbell = Doorbell(self._wake_folder)
        deadline = time.monotonic() + timeout
        seen = self._data_version()
        while (left := deadline - time.monotonic()) > 0 and not stop():
            if self._doorbell.wait(min(self.change_check_seconds, left)):
                return True
            if self._data_version() != seen:
                return True
        return False

    def _data_version(self) -> int:
        return int(self._execute("PRAGMA data_version").fetchone()[0])

    def next_due_at(self) -> float | None:
        """Return the earliest time any poll, download or notification is due."""
        row = self._execute(
            "SELECT min(t) FROM (SELECT min(next_poll_at) AS t FROM jobs"
            " WHERE next_poll_at IS NOT NULL UNION ALL SELECT min(next_attempt_at) FROM outputs"
            " WHERE next_attempt_at IS NOT NULL UNION ALL SELECT min(next_attempt_at)"
            " FROM notifications WHERE next_attempt_at IS NOT NULL)"
        ).fetchone()
        return row[0]

    # Observability (read-only) --------------------------------------------------

    def metrics(self, now: float, lag_buckets: tuple[float, ...]) -> Row:
        """Return the counters and gauges ``/metrics`` exposes (see `Store.metrics`)."""
        callbacks = dict(
            self._execute(
                "SELECT received_verdict, count(*) FROM events GROUP BY received_verdict"
            ).fetchall()
        )
        finished = self._all(
            "SELECT model, status, coalesce(completion_source, 'submit') AS source,"
            " count(*) AS count FROM jobs WHERE finished_at IS NOT NULL"
            " GROUP BY model, status, source ORDER BY model, status, source"
        )
        bucket_sums = ", ".join("sum(lag_seconds <= ?)" for _ in lag_buckets)
        lag = self._execute(
            f"SELECT count(lag_seconds), total(lag_seconds) {', ' if lag_buckets else ''}"
            f"{bucket_sums} FROM events WHERE lag_seconds IS NOT NULL",
            list(lag_buckets),
        ).fetchone()
        downloads = self._execute(
            "SELECT total(status = 'downloaded'), total(status = 'failed'), total(attempts),"
            " total(CASE WHEN status = 'downloaded' THEN bytes END) FROM outputs"
        ).fetchone()
        sent = self._execute(
            "SELECT total(status_code BETWEEN 200 AND 299),"
            " total(finished_at IS NOT NULL AND coalesce(status_code NOT BETWEEN 200 AND 299, 1))"
            " FROM notification_attempts"
        ).fetchone()
        unclaimed = "(lease_expires_at IS NULL OR lease_expires_at <= ?)"
        due = self._execute(
            f"SELECT (SELECT count(*) FROM jobs WHERE next_poll_at <= ? AND {unclaimed}),"
            f" (SELECT count(*) FROM outputs WHERE next_attempt_at <= ? AND {unclaimed}),"
            f" (SELECT count(*) FROM notifications WHERE next_attempt_at <= ? AND {unclaimed})",
            [now] * 6,
        ).fetchone()
        return {
            "callbacks": callbacks,
            "jobs_finished": finished,
            "lag": {
                "count": int(lag[0]),
                "sum": float(lag[1]),
                "buckets": [int(n or 0) for n in lag[2:]],
            },
            "downloads": {
                "downloaded": int(downloads[0]),
                "failed": int(downloads[1]),
                "error": int(downloads[2]),
            },
            "download_bytes": int(downloads[3]),
            "notifications": {"delivered": int(sent[0]), "failed": int(sent[1])},
            "due": {"polls": due[0], "downloads": due[1], "notifications": due[2]},
        }

    def callback_lag_by_model(self) -> list[Row]:
        """Return per model: ``model``, ``callbacks``, ``avg_lag``, ``max_lag`` (seconds)."""
        return self._all(
            "SELECT jobs.model AS model, count(*) AS callbacks,"
            " avg(events.lag_seconds) AS avg_lag, max(events.lag_seconds) AS max_lag"
            " FROM events JOIN jobs ON jobs.id = events.job_id"
            " WHERE events.lag_seconds IS NOT NULL GROUP BY jobs.model ORDER BY jobs.model"
        )

    def oldest_work(self, now: float) -> Row:
        """Return the oldest unfinished job, output and notification, and the last callback."""
        return {
            "job": self._one(
                "SELECT id, status, model, created_at, updated_at, next_poll_at, polls"
                " FROM jobs WHERE finished_at IS NULL ORDER BY seq LIMIT 1"
            ),
            "output": self._one(
                "SELECT job_id, idx, status, attempts, error, created_at, next_attempt_at"
                " FROM outputs WHERE status NOT IN ('downloaded', 'failed')"
                " ORDER BY created_at, job_id, idx LIMIT 1"
            ),
            "notification": self._one(
                "SELECT job_id, status, attempts, last_status, last_error, created_at,"
                " next_attempt_at FROM notifications WHERE status = 'pending'"
                " ORDER BY created_at, job_id LIMIT 1"
            ),
            "last_callback_at": self._execute("SELECT max(received_at) FROM events").fetchone()[0],
        }
