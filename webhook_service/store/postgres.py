"""The PostgreSQL engine: every SQL statement the service runs on it (schema: postgres_schema).

Connections come from a psycopg pool, one per process, opened on first use (so a
gunicorn fork never shares its parent's sockets).  ``pool_size`` is the most
connections one process holds: budget ``(web processes + worker processes) ×
pool_size`` under the server's limit (small hosted plans allow 20), leaving one
for each process's ``migrate`` at start (a short-lived connection of its own).
With gunicorn, "web processes" counts every gunicorn worker process.

Reads outside `transaction()` borrow a connection for one statement (autocommit).
`transaction()` holds one connection for the block.  SQLite serialises every
write transaction (``BEGIN IMMEDIATE``), so the domain code may read a row and
write it back inside `transaction()`; on PostgreSQL the same guarantee comes from
row locks and transaction-scoped advisory locks, taken here, never by the domain:

- inside a transaction, `job`, `jobs_for_event`, `job_by_idempotency_key`,
  `event` and `waiting_events` read ``FOR UPDATE``;
- `job_by_idempotency_key` first locks (client, key), so two submits with one key
  cannot both miss the row and insert;
- an upstream id is locked where a callback finds no job holding it yet and where
  a job's upstream id is set, so a callback racing the record of the submit answer
  is either applied by it or sees it: never left ``waiting``.

Claims are one statement each (``FOR UPDATE SKIP LOCKED`` in a CTE), with the
same lease expiry and fences as SQLite.  Errors: connection failures, an admin
shutdown, pool timeouts become `StoreUnavailable`; the password never appears in
a message or a repr.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from .base import Row, Store, StoreUnavailable, T, where
from .postgres_schema import MIGRATIONS

DEFAULT_POOL_SIZE = 4
POOL_TIMEOUT_SECONDS = 5.0  # wait this long for a free connection, then answer 503
PING_TIMEOUT_SECONDS = 2.0
CONNECT_TIMEOUT_SECONDS = 5

Connection = psycopg.Connection[Row]

_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")


def lock_key(*parts: str) -> int:
    """A signed 64-bit advisory lock key for some text (collisions only cost a wait)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


MIGRATION_LOCK = lock_key("webhook_service", "migrate")


def _columns(names: Iterable[str]) -> list[str]:
    checked = list(names)
    for name in checked:
        if not _COLUMN.match(name):
            raise ValueError(f"not a column name: {name!r}")
    return checked


def _value(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL; SQLite can.  Nothing we store needs one.
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _values(values: Iterable[Any]) -> list[Any]:
    return [_value(value) for value in values]


def _limit(limit: int) -> int | None:
    return None if limit < 0 else limit  # SQLite's LIMIT -1 means no limit; here NULL does


WAKE_CHANNEL = "webhook_service_work"
STOP_CHECK_SECONDS = 0.25


class _Local(threading.local):
    conn: Connection | None = None
    pipeline: psycopg.Pipeline | None = None
    refused = False  # the server refused a statement in this transaction's pipeline
    depth = 0
    listener: Connection | None = None


class PostgresStore(Store):
    """The store on one PostgreSQL database, through the process's connection pool."""

    _pools: ClassVar[dict[tuple[str, int, int], ConnectionPool[Connection]]] = {}
    _pools_guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        database_url: str,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        try:
            params = conninfo_to_dict(database_url)
        except psycopg.ProgrammingError:
            raise ValueError("DATABASE_URL is not a PostgreSQL connection URL") from None
        self._url = database_url
        self._secret = str(params.get("password") or "")
        self._connect_args: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
        self.pool_size = pool_size
        self.timeout = timeout
        host = params.get("host") or params.get("hostaddr") or "localhost"
        port = params.get("port") or "5432"
        self._where = f"{params.get('dbname') or params.get('user') or '?'} on {host}:{port}"
        if params.get("user"):
            self._where += f" as {params['user']}"
        self._local = _Local()

    @classmethod
    def connect(
        cls, database_url: str, pool_size: int = DEFAULT_POOL_SIZE, timeout: float | None = None
    ) -> PostgresStore:
        """Return a store on ``database_url`` (``postgresql://`` or ``postgres://``)."""
        return cls(database_url, pool_size, POOL_TIMEOUT_SECONDS if timeout is None else timeout)

    def __repr__(self) -> str:
        return f"<PostgresStore {self._where}>"

    def describe(self) -> str:
        """Say which database this is, for people (never the password)."""
        return f"PostgreSQL database {self._where}"

    # Connections ----------------------------------------------------------

    def _pool(self) -> ConnectionPool[Connection]:
        key = (self._url, self.pool_size, os.getpid())
        pool = self._pools.get(key)
        if pool is None:
            with self._pools_guard:
                pool = self._pools.get(key)
                if pool is None:
                    pool = ConnectionPool(
                        self._url,
                        min_size=1,
                        max_size=self.pool_size,
                        timeout=self.timeout,
                        kwargs={"autocommit": True, "row_factory": dict_row, **self._connect_args},
                        name=f"webhook_service-{os.getpid()}",
                        open=True,
                    )
                    self._pools[key] = pool
        return pool

    @classmethod
    def close_pools(cls, database_url: str | None = None) -> None:
        """Close this process's pools (on ``database_url`` only, if given)."""
        with cls._pools_guard:
            mine = [
                key
                for key in cls._pools
                if key[2] == os.getpid() and database_url in (None, key[0])
            ]
            closing = [cls._pools.pop(key) for key in mine]
        for pool in closing:
            pool.close(timeout=1.0)

    def close(self) -> None:
        """Nothing to give back: connections return to the pool after every call.

        The process's pool closes at exit (or with `close_pools`).
        """

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        message = " ".join(str(error).split()) or type(error).__name__
        if self._secret:
            message = message.replace(self._secret, "***")
        if isinstance(error, psycopg.errors.DeadlockDetected):
            message = f"deadlock: {message}"
        return StoreUnavailable(f"PostgreSQL ({self._where}): {message}")

    def _query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> _Result:
        """Run one statement: in the open transaction, else on a borrowed connection."""
        cleaned: Any = (
            {name: _value(value) for name, value in params.items()}
            if isinstance(params, Mapping)
            else _values(params)
        )
        conn, pipeline = self._local.conn, self._local.pipeline
        if conn is not None:
            try:
                cursor = conn.execute(sql, cleaned)
                if pipeline is not None:
                    self._sync(pipeline)  # this answer is read: send what waits with it
                return _Result.of(cursor)
            except psycopg.OperationalError as error:
                raise self._unavailable(error) from error
        # Out of a transaction every statement here is idempotent or fenced: a pooled
        # connection found dead (the server restarted) is dropped and the next one tried.
        attempt = 0
        while True:
            conn = None
            try:
                with self._pool().connection() as conn:
                    return _Result.of(conn.execute(sql, cleaned))
            except psycopg.OperationalError as error:
                if conn is not None and conn.broken and attempt < self.pool_size:
                    attempt += 1
                    continue
                raise self._unavailable(error) from error

    def _send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement whose answer nobody reads.

        In a transaction it only joins the pipeline: it reaches the server with the
        next statement whose answer is read, or with COMMIT, so a callback costs
        three round trips instead of eight.  An error it meets is raised there.
        """
        conn = self._local.conn
        if conn is None or self._local.pipeline is None:
            self._query(sql, params)
            return
        try:
            conn.execute(sql, _values(params))
        except psycopg.OperationalError as error:
            raise self._unavailable(error) from error

    def _one(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Row | None:
        rows = self._query(sql, params).rows
        return rows[0] if rows else None

    def _all(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Row]:
        return self._query(sql, params).rows

    def _update(self, table: str, where: str, params: list[Any], changes: Mapping[str, Any]) -> int:
        """Set ``changes`` where ``where`` holds; return how many rows matched."""
        if not changes:
            return 0
        return self._query(*_update_statement(table, where, params, changes)).rowcount

    def _set(self, table: str, where: str, params: list[Any], changes: Mapping[str, Any]) -> None:
        """`_update` when nobody reads the count: it joins the transaction's pipeline."""
        if changes:
            self._send(*_update_statement(table, where, params, changes))

    def _in_transaction(self) -> bool:
        return self._local.conn is not None

    def _lock(self, *parts: str) -> None:
        """Take a transaction-scoped advisory lock (released at COMMIT or ROLLBACK)."""
        self._send("SELECT pg_advisory_xact_lock(%s)", [lock_key(*parts)])

    def _for_update(self) -> str:
        return " FOR UPDATE" if self._in_transaction() else ""

    # Schema and health ------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations under an advisory lock; return the names applied."""
        applied: list[str] = []
        try:
            with psycopg.connect(self._url, autocommit=True, **self._connect_args) as conn:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations ("
                        " name TEXT PRIMARY KEY,"
                        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    )
                    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
                    for name, statements in MIGRATIONS:
                        if name in done:
                            continue
                        for statement in statements:
                            conn.execute(statement)  # type: ignore[arg-type]
                        conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", [name])
                        applied.append(name)
        except psycopg.OperationalError as error:
            raise self._unavailable(error) from error
        return applied

    def ping(self) -> bool:
        """Answer whether the database is reachable and migrated."""
        try:
            with self._pool().connection(timeout=PING_TIMEOUT_SECONDS) as conn:
                conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except psycopg.Error:
            return False
        return True

    # Transactions -------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[PostgresStore]:
        """Hold one connection for a block that commits as one; nested: a savepoint.

        The block runs in pipeline mode: BEGIN, and the writes whose answers nobody
        reads (`_send`), travel with the next statement that is read, or with COMMIT.
        """
        local = self._local
        if local.conn is not None:
            local.depth += 1
            savepoint = f"sp{local.depth}"
            self._send(f"SAVEPOINT {savepoint}")
            try:
                yield self
                self._flush()  # queued writes answer here, so one that failed rolls back too
            except BaseException:
                if not local.conn.broken:
                    self._drop_queued()
                    self._query(f"ROLLBACK TO SAVEPOINT {savepoint}")
                    self._query(f"RELEASE SAVEPOINT {savepoint}")
                raise
            else:
                self._send(f"RELEASE SAVEPOINT {savepoint}")
            finally:
                local.depth -= 1
            return
        pool = self._pool()
        conn = self._checkout(pool)
        local.conn, local.depth, local.refused = conn, 0, False
        reusable = False
        try:
            with conn.pipeline() as pipeline:
                local.pipeline = pipeline
                conn.execute("BEGIN")
                try:
                    yield self
                except psycopg.Error:
                    self._drop_queued()
                    raise
                except BaseException:
                    reusable = self._drop_queued()
                    raise
                conn.execute("COMMIT")
            reusable = True
        except psycopg.OperationalError as error:  # COMMIT, or a queued write, met it
            raise self._unavailable(error) from error
        finally:
            if local.refused:
                reusable = False
            local.conn, local.pipeline = None, None
            if reusable and conn.info.transaction_status != pq.TransactionStatus.IDLE:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    reusable = False
            if not reusable:
                # Closing rolls back.  After the server refused a statement in a pipeline,
                # psycopg may count as prepared a statement the server skipped: not reused.
                conn.close()
            pool.putconn(conn)

    def _flush(self) -> None:
        """Send what the pipeline holds and read its answers: queued errors are raised here."""
        if self._local.pipeline is not None:
            try:
                self._sync(self._local.pipeline)
            except psycopg.OperationalError as error:
                raise self._unavailable(error) from error

    def _drop_queued(self) -> bool:
        """Send what the pipeline holds; False if it met an error, which is not raised
        (the block's own error comes first)."""
        conn, pipeline = self._local.conn, self._local.pipeline
        if pipeline is None or conn is None or conn.broken:
            return False
        try:
            self._sync(pipeline)
        except psycopg.Error:
            return False
        return True

    def _sync(self, pipeline: psycopg.Pipeline) -> None:
        """Sync the pipeline, noting when the server refused a statement in it."""
        try:
            pipeline.sync()
        except psycopg.Error:
            self._local.refused = True
            raise

    def _checkout(self, pool: ConnectionPool[Connection]) -> Connection:
        """Check out a connection; skip connections the server closed while they sat idle.

        BEGIN no longer travels alone, so it cannot be the probe: a connection whose
        socket has something to read while idle (EOF, or the server's notice that it
        is shutting down) is probed with a round trip; a quiet one costs nothing.
        """
        for attempt in range(self.pool_size + 1):
            try:
                conn = pool.getconn()
            except psycopg.OperationalError as error:  # PoolTimeout, TooManyRequests
                raise self._unavailable(error) from error
            try:
                if _quiet(conn):
                    return conn
                conn.execute("SELECT 1")
                return conn
            except psycopg.OperationalError as error:
                pool.putconn(conn)
                if conn.broken and attempt < self.pool_size:
                    continue
                raise self._unavailable(error) from error
        raise AssertionError("unreachable")

    def batched(self, work: Callable[[Store], T]) -> T:
        """Run a short write in its own transaction (PostgreSQL groups commits itself)."""
        with self.transaction():
            return work(self)

    # Jobs ---------------------------------------------------------------

    def insert_job(self, job: Mapping[str, Any]) -> None:
        """Insert a new job row (params given as a dict)."""
        row = dict(job, params=json.dumps(job["params"], sort_keys=True))
        columns = ", ".join(_columns(row))
        marks = ", ".join("%s" for _ in row)
        self._query(f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(row.values()))

    def job(self, job_id: str) -> Row | None:
        """Return the job with our id, or None (locked until commit, in a transaction)."""
        return self._one("SELECT * FROM jobs WHERE id = %s" + self._for_update(), [job_id])

    def job_by_idempotency_key(self, client: str, key: str) -> Row | None:
        """Return the job a client submitted under an Idempotency-Key.

        In a transaction the (client, key) pair stays locked until commit, so a
        concurrent submit with the same key waits and then finds this one's job.
        """
        if self._in_transaction():
            self._lock("idempotency", client, key)
        return self._one(
            "SELECT * FROM jobs WHERE client = %s AND idempotency_key = %s" + self._for_update(),
            [client, key],
        )

    def jobs_for_event(self, token: str | None, upstream_id: str) -> tuple[Row | None, Row | None]:
        """Return (the job with this callback token, the job with this upstream id)."""
        sql = "SELECT * FROM jobs WHERE callback_token = %s OR upstream_id = %s"
        if not self._in_transaction():
            return _split(self._all(sql, [token, upstream_id]), token, upstream_id)
        found = _split(self._all(sql + " FOR UPDATE", [token, upstream_id]), token, upstream_id)
        if found[1] is not None:
            return found
        # No job holds this upstream id yet: wait out any transaction recording it
        # (it locks the id too), then look again with a fresh snapshot.  Rows are
        # locked before the id, in the same order the recording side uses.
        self._lock("upstream", upstream_id)
        return _split(self._all(sql + " FOR UPDATE", [token, upstream_id]), token, upstream_id)

    def update_job(self, job_id: str, changes: Mapping[str, Any]) -> None:
        """Set columns of one job."""
        if changes.get("upstream_id") and self._in_transaction():
            self._lock("upstream", str(changes["upstream_id"]))
        self._set("jobs", "id = %s", [job_id], changes)

    def list_jobs(self, status: str | None, limit: int, before_seq: int | None) -> list[Row]:
        """Return jobs newest first, optionally filtered, older than ``before_seq``."""
        clause, params = where([("status = %s", status), ("seq < %s", before_seq)])
        return self._all(
            f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT %s", [*params, _limit(limit)]
        )

    def count_jobs_by_status(self) -> dict[str, int]:
        """Return how many jobs are in each status."""
        rows = self._all("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        return {row["status"]: int(row["n"]) for row in rows}

    # Outputs ------------------------------------------------------------

    def create_outputs(self, job_id: str, count: int, now: float) -> None:
        """Create output rows 0..count-1 for a job, due for download now."""
        self._send(
            "INSERT INTO outputs (job_id, idx, next_attempt_at, created_at, updated_at)"
            " SELECT %s, i, %s, %s, %s FROM generate_series(0, %s - 1) i"
            " ON CONFLICT DO NOTHING",
            [job_id, now, now, now, count],
        )
        self._wake_workers()

    def _wake_workers(self) -> None:
        """Tell listening workers that work became due (sent when the transaction commits)."""
        self._send(f"SELECT pg_notify('{WAKE_CHANNEL}', '')")

    def outputs(self, job_ids: Iterable[str]) -> dict[str, list[Row]]:
        """Return each job's outputs by index, for many jobs in one query."""
        ids = list(job_ids)
        found: dict[str, list[Row]] = {job_id: [] for job_id in ids}
        if not ids:
            return found
        for row in self._all(
            "SELECT * FROM outputs WHERE job_id = ANY(%s) ORDER BY job_id, idx", [_values(ids)]
        ):
            found[row["job_id"]].append(row)
        return found

    def output(self, job_id: str, index: int) -> Row | None:
        """Return one output row."""
        return self._one("SELECT * FROM outputs WHERE job_id = %s AND idx = %s", [job_id, index])

    def update_output(
        self, job_id: str, index: int, changes: Mapping[str, Any], fence: int | None = None
    ) -> bool:
        """Set columns of one output; with ``fence``, only if that claim still holds."""
        where, params = "job_id = %s AND idx = %s", [job_id, index]
        if fence is not None:
            where += " AND fence = %s"
            params.append(fence)
        return self._update("outputs", where, params, changes) == 1

    # Webhook events -------------------------------------------------------

    def insert_event(self, event: Mapping[str, Any]) -> int | None:
        """Store an event; return its id, or None when its dedup key is already stored."""
        columns = ", ".join(_columns(event))
        marks = ", ".join("%s" for _ in event)
        row = self._one(
            f"INSERT INTO events ({columns}) VALUES ({marks})"
            " ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
            list(event.values()),
        )
        return int(row["id"]) if row is not None else None

    def update_event(self, event_id: int, changes: Mapping[str, Any]) -> None:
        """Set columns of one stored event."""
        self._set("events", "id = %s", [event_id], changes)

    def event(self, event_id: int) -> Row | None:
        """Return one stored event."""
        return self._one("SELECT * FROM events WHERE id = %s" + self._for_update(), [event_id])

    def waiting_events(self, upstream_id: str | None, token: str) -> list[Row]:
        """Return events kept for a job that did not exist (or had no upstream id) yet."""
        return self._all(
            "SELECT * FROM events WHERE verdict = 'waiting' AND (callback_token = %s"
            " OR upstream_id = %s) ORDER BY id" + self._for_update(),
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
                ("verdict = %s", verdict),
                ("job_id = %s", job_id),
                ("upstream_id = %s", upstream_id),
                ("received_at >= %s", since),
            ]
        )
        return self._all(
            f"SELECT * FROM events {clause} ORDER BY id DESC LIMIT %s", [*params, _limit(limit)]
        )

    def count_events(self) -> int:
        """Return how many events are stored."""
        row = self._one("SELECT count(*) AS n FROM events")
        assert row is not None
        return int(row["n"])

    # Notifications ------------------------------------------------------------

    def insert_notification(self, notification: Mapping[str, Any]) -> bool:
        """Queue a job's notification; False when the job already has one."""
        columns = ", ".join(_columns(notification))
        marks = ", ".join("%s" for _ in notification)
        result = self._query(
            f"INSERT INTO notifications ({columns}) VALUES ({marks})"
            " ON CONFLICT (job_id) DO NOTHING",
            list(notification.values()),
        )
        if result.rowcount == 1:
            self._wake_workers()
        return result.rowcount == 1

    def notifications(self, job_ids: Iterable[str]) -> dict[str, Row]:
        """Return the notifications of many jobs, by job id."""
        ids = _values(job_ids)
        if not ids:
            return {}
        rows = self._all("SELECT * FROM notifications WHERE job_id = ANY(%s)", [ids])
        return {row["job_id"]: row for row in rows}

    def list_notifications(
        self, status: str | None = None, job_id: str | None = None, limit: int = 50
    ) -> list[Row]:
        """Return notifications newest first, filtered."""
        clause, params = where([("status = %s", status), ("job_id = %s", job_id)])
        return self._all(
            f"SELECT * FROM notifications {clause} ORDER BY created_at DESC, job_id LIMIT %s",
            [*params, _limit(limit)],
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
                "SELECT 1 AS held FROM notifications WHERE job_id = %s AND fence = %s FOR UPDATE",
                [job_id, fence],
            )
            if held is None:
                return False
            self._query("UPDATE notifications SET sent = %s WHERE job_id = %s", [attempt, job_id])
            result = self._query(
                "INSERT INTO notification_attempts (job_id, attempt, owner, started_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (job_id, attempt) DO NOTHING",
                [job_id, attempt, owner, now],
            )
            return result.rowcount == 1

    def end_notification_attempt(
        self, job_id: str, attempt: int, changes: Mapping[str, Any]
    ) -> None:
        """Record how an attempt ended (``finished_at``, ``status_code``, ``error``)."""
        self._update(
            "notification_attempts", "job_id = %s AND attempt = %s", [job_id, attempt], changes
        )

    def notification_attempts(self, job_id: str) -> list[Row]:
        """Return a job's notification attempts, oldest first."""
        return self._all(
            "SELECT * FROM notification_attempts WHERE job_id = %s ORDER BY attempt", [job_id]
        )

    def resend_notification(self, job_id: str, now: float) -> bool:
        """Make a job's notification due again now, with a fresh retry schedule.

        ``attempts`` (the schedule's position) starts over; ``sent`` and the attempt
        history keep counting, so attempt numbers stay unique.
        """
        result = self._query(
            "UPDATE notifications SET status = 'pending', attempts = 0, next_attempt_at = %(now)s,"
            " updated_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL,"
            " fence = fence + 1 WHERE job_id = %(job)s",
            {"now": now, "job": job_id},
        )
        if result.rowcount != 1:
            return False
        self._wake_workers()
        return True

    # Work claiming (worker) ---------------------------------------------------

    def claim_due_jobs(self, owner: str, now: float, until: float, limit: int) -> list[Row]:
        """Lease up to ``limit`` jobs whose poll is due; each claim bumps the job's fence."""
        return self._claim("jobs", ("id",), "next_poll_at", owner, now, until, limit)

    def claim_due_outputs(self, owner: str, now: float, until: float, limit: int) -> list[Row]:
        """Lease up to ``limit`` outputs whose download is due; each claim bumps the fence."""
        return self._claim(
            "outputs", ("job_id", "idx"), "next_attempt_at", owner, now, until, limit
        )

    def claim_due_notifications(
        self, owner: str, now: float, until: float, limit: int
    ) -> list[Row]:
        """Lease up to ``limit`` notifications whose next attempt is due."""
        return self._claim(
            "notifications", ("job_id",), "next_attempt_at", owner, now, until, limit
        )

    def _claim(
        self,
        table: str,
        key: tuple[str, ...],
        due: str,
        owner: str,
        now: float,
        until: float,
        limit: int,
    ) -> list[Row]:
        # One statement: the CTE locks due rows other claimers have not locked (SKIP
        # LOCKED) and no more than LIMIT of them; the UPDATE leases them and bumps fences.
        keys = ", ".join(key)
        match = " AND ".join(f"{table}.{name} = due.{name}" for name in key)
        return self._all(
            f"WITH due AS (SELECT {keys} FROM {table} WHERE {due} <= %(now)s"
            "   AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)"
            f"  ORDER BY {due} LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
            f"), claimed AS (UPDATE {table} SET lease_owner = %(owner)s,"
            f"  lease_expires_at = %(until)s, fence = {table}.fence + 1"
            f"  FROM due WHERE {match} RETURNING {table}.*"
            f") SELECT * FROM claimed ORDER BY {due}, {keys}",
            {"owner": owner, "now": now, "until": until, "limit": limit},
        )

    def renew_job_lease(self, job_id: str, fence: int, until: float) -> bool:
        """Extend a poll's lease; False when a newer claim took it over."""
        changes = {"lease_expires_at": until}
        return self._update("jobs", "id = %s AND fence = %s", [job_id, fence], changes) == 1

    def renew_output_lease(self, job_id: str, index: int, fence: int, until: float) -> bool:
        """Extend a download's lease; False when a newer claim took it over."""
        return self.update_output(job_id, index, {"lease_expires_at": until}, fence)

    def finish_job_claim(self, job_id: str, fence: int, changes: Mapping[str, Any]) -> bool:
        """Release a poll claim, setting ``changes``; False when the claim was lost."""
        released = {**changes, "lease_owner": None, "lease_expires_at": None}
        return self._update("jobs", "id = %s AND fence = %s", [job_id, fence], released) == 1

    def finish_output_claim(
        self, job_id: str, index: int, fence: int, changes: Mapping[str, Any]
    ) -> bool:
        """Release a download claim, setting ``changes``; False when the claim was lost."""
        released = {**changes, "lease_owner": None, "lease_expires_at": None}
        return self.update_output(job_id, index, released, fence)

    def finish_notification_claim(
        self, job_id: str, fence: int, changes: Mapping[str, Any]
    ) -> bool:
        """Release a delivery claim, setting ``changes``; False when the claim was lost."""
        released = {**changes, "lease_owner": None, "lease_expires_at": None}
        where = "job_id = %s AND fence = %s"
        return self._update("notifications", where, [job_id, fence], released) == 1

    def release_claims(self, owner: str) -> None:
        """Give up every claim ``owner`` holds, so other workers can take the work at once."""
        with self.transaction():
            self._query(
                "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE lease_owner = %s",
                [owner],
            )
            self._query(
                "UPDATE outputs SET lease_owner = NULL, lease_expires_at = NULL,"
                " status = 'pending' WHERE lease_owner = %s AND status = 'downloading'",
                [owner],
            )
            self._query(
                "UPDATE notifications SET lease_owner = NULL, lease_expires_at = NULL"
                " WHERE lease_owner = %s",
                [owner],
            )

    def wait_for_change(self, timeout: float, stop: Callable[[], bool]) -> bool:
        """LISTEN on a connection of this thread's own (outside the pool) for a wake-up.

        NOTIFY is only a latency optimisation (it does not pass some poolers, and a
        listener that drops misses what was sent meanwhile): callers keep polling.
        """
        deadline = time.monotonic() + timeout
        try:
            listener = self._local.listener
            if listener is None or listener.closed or listener.broken:
                listener = psycopg.connect(self._url, autocommit=True, **self._connect_args)
                listener.execute(f"LISTEN {WAKE_CHANNEL}")
                self._local.listener = listener
            while not stop():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                for _ in listener.notifies(timeout=min(left, STOP_CHECK_SECONDS), stop_after=1):
                    return True
        except psycopg.OperationalError as error:
            self._local.listener = None
            raise self._unavailable(error) from error
        return False

    def next_due_at(self) -> float | None:
        """Return the earliest time any poll, download or notification is due."""
        row = self._one(
            "SELECT LEAST("
            " (SELECT min(next_poll_at) FROM jobs WHERE next_poll_at IS NOT NULL),"
            " (SELECT min(next_attempt_at) FROM outputs WHERE next_attempt_at IS NOT NULL),"
            " (SELECT min(next_attempt_at) FROM notifications WHERE next_attempt_at IS NOT NULL)"
            ") AS t"
        )
        return None if row is None or row["t"] is None else float(row["t"])

    # Observability (read-only) --------------------------------------------------

    def metrics(self, now: float, lag_buckets: tuple[float, ...]) -> Row:
        """Return the counters and gauges ``/metrics`` exposes (see `Store.metrics`)."""
        callbacks = self._all(
            "SELECT received_verdict AS verdict, count(*) AS n FROM events"
            " GROUP BY received_verdict"
        )
        finished = self._all(
            "SELECT model, status, coalesce(completion_source, 'submit') AS source,"
            " count(*) AS count FROM jobs WHERE finished_at IS NOT NULL"
            " GROUP BY model, status, source ORDER BY model, status, source"
        )
        buckets = "".join(
            f", count(*) FILTER (WHERE lag_seconds <= %s) AS b{n}" for n in range(len(lag_buckets))
        )
        lag = self._one(
            f"SELECT count(lag_seconds) AS n, coalesce(sum(lag_seconds), 0) AS total{buckets}"
            " FROM events WHERE lag_seconds IS NOT NULL",
            list(lag_buckets),
        )
        downloads = self._one(
            "SELECT count(*) FILTER (WHERE status = 'downloaded') AS downloaded,"
            " count(*) FILTER (WHERE status = 'failed') AS failed,"
            " coalesce(sum(attempts), 0) AS attempts,"
            " coalesce(sum(bytes) FILTER (WHERE status = 'downloaded'), 0) AS bytes FROM outputs"
        )
        sent = self._one(
            "SELECT count(*) FILTER (WHERE status_code BETWEEN 200 AND 299) AS delivered,"
            " count(*) FILTER (WHERE finished_at IS NOT NULL"
            "  AND coalesce(status_code NOT BETWEEN 200 AND 299, true)) AS failed"
            " FROM notification_attempts"
        )
        unclaimed = "(lease_expires_at IS NULL OR lease_expires_at <= %(now)s)"
        due = self._one(
            "SELECT"
            f" (SELECT count(*) FROM jobs WHERE next_poll_at <= %(now)s AND {unclaimed}) AS polls,"
            f" (SELECT count(*) FROM outputs WHERE next_attempt_at <= %(now)s AND {unclaimed})"
            "  AS downloads,"
            " (SELECT count(*) FROM notifications"
            f"  WHERE next_attempt_at <= %(now)s AND {unclaimed}) AS notifications",
            {"now": now},
        )
        assert lag is not None and downloads is not None and sent is not None and due is not None
        return {
            "callbacks": {row["verdict"]: int(row["n"]) for row in callbacks},
            "jobs_finished": [dict(row, count=int(row["count"])) for row in finished],
            "lag": {
                "count": int(lag["n"]),
                "sum": float(lag["total"]),
                "buckets": [int(lag[f"b{n}"] or 0) for n in range(len(lag_buckets))],
            },
            "downloads": {
                "downloaded": int(downloads["downloaded"]),
                "failed": int(downloads["failed"]),
                "error": int(downloads["attempts"]),
            },
            "download_bytes": int(downloads["bytes"]),
            "notifications": {"delivered": int(sent["delivered"]), "failed": int(sent["failed"])},
            "due": {name: int(value) for name, value in due.items()},
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
        last = self._one("SELECT max(received_at) AS t FROM events")
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
            "last_callback_at": None if last is None else last["t"],
        }


class _Result:
    """What one statement returned, read before its connection goes back to the pool."""

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    @classmethod
    def of(cls, cursor: psycopg.Cursor[Row]) -> _Result:
        """Read a cursor's rows (if the statement returns any) and row count."""
        # The result's status, not `description`: that builds a Column object per column.
        result = cursor.pgresult
        returned = result is not None and result.status == pq.ExecStatus.TUPLES_OK
        return cls(cursor.fetchall() if returned else [], cursor.rowcount)


def _update_statement(
    table: str, where: str, params: list[Any], changes: Mapping[str, Any]
) -> tuple[str, list[Any]]:
    columns = ", ".join(f"{name} = %s" for name in _columns(changes))
    return f"UPDATE {table} SET {columns} WHERE {where}", [*changes.values(), *params]


def _quiet(conn: Connection) -> bool:
    """Answer whether an idle connection has nothing waiting to be read (no round trip)."""
    if conn.closed:
        return False
    poller = select.poll()  # not select(): a web process may hold descriptors past 1024
    poller.register(conn.fileno(), select.POLLIN)
    return not poller.poll(0)


def _split(rows: list[Row], token: str | None, upstream_id: str) -> tuple[Row | None, Row | None]:
    by_token = next((row for row in rows if token and row["callback_token"] == token), None)
    by_upstream = next((row for row in rows if row["upstream_id"] == upstream_id), None)
    return by_token, by_upstream


@atexit.register
def _close_pools_at_exit() -> None:
    PostgresStore.close_pools()
