"""An accepted submit's upstream id survives a database that stays locked."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from webhook_service import create_app, submission
from webhook_service.config import load_settings
from webhook_service.errors import ServiceError
from webhook_service.modelgates import ModelGatesClient
from webhook_service.store import open_store
from webhook_service.store.sqlite import SqliteStore

PARAMS = {"model": "google/veo-3.1", "prompt": "a lighthouse at dusk", "duration": 8}


class LockAfterAnswer(httpx.HTTPTransport):
    """The real loopback transport; takes the database's write lock once the 202 is in."""

    def __init__(self, database: Path) -> None:
        super().__init__()
        self.holder = sqlite3.connect(
            str(database), isolation_level=None, timeout=5, check_same_thread=False
        )
        self.locked = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.holder.execute("BEGIN EXCLUSIVE")  # another process, a checkpoint, a slow disk
            self.locked.set()
        return response

    def release(self) -> None:
        self.holder.execute("ROLLBACK")
        self.holder.close()


@pytest.fixture
def settings(env):
    create_app({**env, "TESTING": True})  # migrates the database
    return load_settings(env)


def submit_while_locked(settings, sandbox, record_for, unlock_after=None, transport=None):
    transport = transport or LockAfterAnswer(settings.database_path)
    client = ModelGatesClient(sandbox.base_url, "sandbox-key", transport=transport)
    store = SqliteStore(settings.database_path, busy_timeout_ms=50)
    if unlock_after is not None:

        def unlock() -> None:
            transport.locked.wait(10)
            time.sleep(unlock_after)  # the outage lasts a while, then ends
            transport.release()

        threading.Thread(target=unlock, daemon=True).start()
    try:
        return submission.submit(
            store, client, settings, "client", None, dict(PARAMS), record_for=record_for
        ), transport
    finally:
        store.close()


def only_job(settings):
    store = SqliteStore(settings.database_path)
    try:
        rows = store.list_jobs(None, 10, None)
    finally:
        store.close()
    assert len(rows) == 1
    return rows[0]


@pytest.mark.sqlite_only  # holds SQLite's lock from outside
def test_a_short_lock_after_the_202_is_waited_out_and_the_job_recorded(settings, sandbox):
    (job, created), _ = submit_while_locked(settings, sandbox, record_for=10, unlock_after=0.3)
    assert created and job["upstream_id"] and job["status"] == "pending"
    assert only_job(settings)["upstream_id"] == job["upstream_id"]
    assert not list(submission.held_submits(settings).glob("*.json"))
    assert sandbox.stats()["submits"] == 1


@pytest.mark.sqlite_only
def test_a_long_lock_answers_503_with_the_job_id_and_records_it_when_the_lock_ends(
    settings, sandbox
):
    transport = LockAfterAnswer(settings.database_path)
    with pytest.raises(ServiceError) as raised:
        submit_while_locked(settings, sandbox, record_for=0.2, transport=transport)
    error = raised.value
    assert error.code == 503 and error.error_code == "accepted_not_recorded"
    job_id, upstream_id = error.details["job_id"], error.details["upstream_id"]
    assert upstream_id and sandbox.job(upstream_id)["id"] == upstream_id
    held = submission.held_submits(settings) / f"{job_id}.json"
    assert held.exists()  # durable before the answer went out
    assert only_job(settings)["upstream_id"] is None  # the database could not take it yet

    transport.release()  # the outage ends: the background drainer records it, unasked
    deadline = time.monotonic() + 15
    while only_job(settings)["upstream_id"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    row = only_job(settings)
    assert row["id"] == job_id and row["upstream_id"] == upstream_id
    assert row["status"] == "pending" and row["submit_outcome"] == "accepted"
    assert not held.exists()
    assert sandbox.stats()["submits"] == 1  # never resubmitted


def test_a_submit_held_by_a_process_that_died_is_recorded_at_the_next_start(env, sandbox):
    app = create_app({**env, "TESTING": True})
    settings = load_settings(env)
    client = ModelGatesClient(sandbox.base_url, "sandbox-key")
    store = open_store(settings)
    job_id = "vj_" + "0" * 24
    store.insert_job(
        {
            "id": job_id,
            "callback_token": "token",
            "client": "client",
            "request_hash": "x",
            "status": "submitting",
            "model": PARAMS["model"],
            "params": PARAMS,
            "created_at": time.time(),
            "updated_at": time.time(),
        }
    )
    answer = client.submit(dict(PARAMS, callback_url="https://example.invalid/cb"))
    submission.accepted.hold(submission.held_submits(settings), job_id, answer)
    del app

    create_app({**env, "TESTING": True})  # the next process start records it

    row = store.job(job_id)
    store.close()
    assert row is not None and row["upstream_id"] == answer["id"]
    assert not list(submission.held_submits(settings).glob("*.json"))


def test_a_held_id_is_kept_even_when_the_watchdog_ended_the_job_meanwhile(env, sandbox):
    create_app({**env, "TESTING": True})
    settings = load_settings(env)
    store = open_store(settings)
    job_id = "vj_" + "1" * 24
    now = time.time()
    store.insert_job(
        {
            "id": job_id,
            "callback_token": "token-1",
            "client": "client",
            "request_hash": "x",
            "status": "submit_failed",
            "submit_outcome": "ambiguous",
            "error": "no callback revealed the upstream job within SUBMIT_TIMEOUT_SECONDS",
            "model": PARAMS["model"],
            "params": PARAMS,
            "created_at": now - 7200,
            "updated_at": now,
            "finished_at": now,
        }
    )
    folder = submission.held_submits(settings)
    submission.accepted.hold(folder, job_id, {"id": "job-paid-for", "status": "pending"})

    assert submission.record_held(store, settings) == 0

    row = store.job(job_id)
    store.close()
    assert row["upstream_id"] == "job-paid-for"  # the paid job can be found upstream
    assert row["status"] == "submit_failed"  # terminal statuses never change
    assert "job-paid-for" in row["error"]
    assert not list(folder.glob("*.json"))


def test_a_held_file_this_database_cannot_take_is_kept_and_the_start_goes_on(env, sandbox):
    create_app({**env, "TESTING": True})
    settings = load_settings(env)
    folder = submission.held_submits(settings)
    stray = submission.accepted.hold(folder, "vj_not_in_this_database", {"id": "job-x"})

    create_app({**env, "TESTING": True})  # starts, says why in the log, keeps the file

    assert stray.exists()


def test_an_answer_with_a_status_of_its_own_still_leaves_the_job_pending(env, sandbox):
    create_app({**env, "TESTING": True})
    settings = load_settings(env)
    store = open_store(settings)
    job_id = "vj_" + "2" * 24
    now = time.time()
    store.insert_job(
        {
            "id": job_id,
            "callback_token": "token-2",
            "client": "client",
            "request_hash": "x",
            "status": "submitting",
            "model": PARAMS["model"],
            "params": PARAMS,
            "created_at": now,
            "updated_at": now,
        }
    )
    job = submission.record_accepted(
        store, settings, job_id, {"id": "job-q", "status": "queued"}, now
    )
    store.close()
    assert job["status"] == "pending" and job["upstream_id"] == "job-q"
