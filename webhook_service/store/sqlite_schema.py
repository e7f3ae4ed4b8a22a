"""The SQLite schema: a sqlite-utils `Migrations` set, applied in order.

Every migration here has its PostgreSQL twin in `postgres_schema` (a test checks
the two lists match).  Times are Unix seconds (REAL); JSON columns hold text.
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("webhook_service")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            upstream_id TEXT UNIQUE,
            callback_token TEXT NOT NULL UNIQUE,
            client TEXT NOT NULL,
            idempotency_key TEXT,
            request_hash TEXT NOT NULL,
            status TEXT NOT NULL,
            submit_outcome TEXT,
            model TEXT NOT NULL,
            prompt TEXT,
            params TEXT NOT NULL,
            error TEXT,
            generation_id TEXT,
            cost REAL,
            completion_source TEXT,
            outputs_known INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            next_poll_at REAL,
            polls INTEGER NOT NULL DEFAULT 0,
            poll_not_found INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires_at REAL,
            fence INTEGER NOT NULL DEFAULT 0,
            UNIQUE (client, idempotency_key)
        );
        CREATE INDEX jobs_due ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;
        CREATE INDEX jobs_status ON jobs (status, seq);

        CREATE TABLE outputs (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            idx INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            bytes INTEGER,
            sha256 TEXT,
            error TEXT,
            file_name TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            failing_since REAL,
            lease_owner TEXT,
            lease_expires_at REAL,
            fence INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (job_id, idx)
        );
        CREATE INDEX outputs_due ON outputs (next_attempt_at)
            WHERE next_attempt_at IS NOT NULL;

        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            dedup_key TEXT UNIQUE,
            idempotency_key TEXT,
            event_type TEXT,
            upstream_id TEXT,
            callback_token TEXT,
            job_id TEXT,
            verdict TEXT NOT NULL,
            reason TEXT,
            body BLOB NOT NULL,
            headers TEXT NOT NULL,
            remote_addr TEXT,
            url TEXT,
            signed_at INTEGER,
            received_at REAL NOT NULL,
            applied_at REAL
        );
        CREATE INDEX events_waiting_upstream ON events (upstream_id) WHERE verdict = 'waiting';
        CREATE INDEX events_waiting_token ON events (callback_token) WHERE verdict = 'waiting';
        CREATE INDEX events_received ON events (received_at);
        """
    )


@migrations()
def m002_notifications(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        ALTER TABLE jobs ADD COLUMN notify_url TEXT;

        CREATE TABLE notifications (
            job_id TEXT PRIMARY KEY REFERENCES jobs (id),
            url TEXT NOT NULL,
            webhook_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body BLOB NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            sent INTEGER NOT NULL DEFAULT 0,
            last_status INTEGER,
            last_error TEXT,
            next_attempt_at REAL,
            lease_owner TEXT,
            lease_expires_at REAL,
            fence INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            delivered_at REAL
        );
        CREATE INDEX notifications_due ON notifications (next_attempt_at)
            WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX notifications_status ON notifications (status, created_at);

        CREATE TABLE notification_attempts (
            id INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES notifications (job_id),
            attempt INTEGER NOT NULL,
            owner TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            status_code INTEGER,
            error TEXT,
            UNIQUE (job_id, attempt)
        );
        """
    )


@migrations()
def m003_event_lag(db: sqlite_utils.Database) -> None:
    # Observability: seconds from upstream's event created_at to our receiving it.
    db.execute("ALTER TABLE events ADD COLUMN lag_seconds REAL")


@migrations()
def m004_received_verdict(db: sqlite_utils.Database) -> None:
    # The verdict at receipt never changes (a replay changes `verdict`): counters count it.
    db.executescript(
        """
        ALTER TABLE events ADD COLUMN received_verdict TEXT;
        UPDATE events SET received_verdict = verdict;
        """
    )
