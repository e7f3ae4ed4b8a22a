"""The store engines: the same guarantees on SQLite and on PostgreSQL, proved per engine."""

from __future__ import annotations

import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlite_utils
from conftest import AUTH, LiveServer
from pg import PostgresServer, free_port

from webhook_service import create_app, events, submission
from webhook_service.config import Settings
from webhook_service.store import Store, StoreUnavailable, wakeups
from webhook_service.store.postgres import PostgresStore
from webhook_service.store.postgres_schema import MIGRATIONS
from webhook_service.store.sqlite import SqliteStore
from webhook_service.store.sqlite_schema import migrations as sqlite_migrations

REFUSED = (sqlite3.IntegrityError, psycopg.IntegrityError)
"""What either engine raises for a write a constraint refuses."""

VALID = {"model": "google/veo-3.1", "prompt": "a lighthouse at dusk", "duration": 8}


@pytest.fixture
def new_store(
    engine: str, tmp_path: Path, database_url: str | None
) -> Iterator[Callable[[], Store]]:
    """Open more stores on one migrated database (one per thread, as the service does)."""
    opened: list[Store] = []

    def open_one() -> Store:
        store: Store = (
            PostgresStore.connect(database_url)
            if database_url
            else SqliteStore(tmp_path / "db.sqlite3")
        )
        opened.append(store)
        return store

    open_one().migrate()
    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(new_store: Callable[[], Store]) -> Store:
    return new_store()


def a_job(job_id: str = "vj_1", upstream_id: str | None = None, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "id": job_id,
        "upstream_id": upstream_id,
        "callback_token": f"tok-{job_id}",
        "client": "c",
        "request_hash": "h",
        "status": "submitting" if upstream_id is None else "pending",
        "model": "google/veo-3.1",
        "prompt": "p",
        "params": {"model": "google/veo-3.1"},
        "created_at": now,
        "updated_at": now,
        **extra,
    }


def completed_body(upstream_id: str, outputs: int = 1) -> bytes:
    data = {
        "id": upstream_id,
        "status": "completed",
        "unsigned_urls": [f"https://cdn.example/{n}" for n in range(outputs)],
    }
    return json.dumps({"type": "video.generation.completed", "data": data}).encode()


def receive(store: Store, body: bytes, key: str | None = None) -> events.Receipt:
    headers = {"X-OpenRouter-Idempotency-Key": key} if key else {}
    return events.receive(store, body, headers, None, int(time.time()), time.time())


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(n)`` on ``count`` threads released at the same moment."""
    barrier = threading.Barrier(count)

    def start(n: int) -> Any:
        barrier.wait(timeout=30)
        return work(n)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


# Rows -------------------------------------------------------------------------------


def fill(store: Store) -> int | None:
    """Write one row of every kind; return the event's id."""
    store.insert_job(a_job(upstream_id="up-1", next_poll_at=5, created_at=1.5, updated_at=2))
    store.create_outputs("vj_1", 2, 7.0)
    return store.insert_event(
        {
            "dedup_key": "d",
            "body": b"\x00\xff",
            "headers": "{}",
            "verdict": "received",
            "received_at": 3.5,
            "signed_at": 1_900_000_000,
        }  # fmt: skip
    )


def test_every_sqlite_migration_has_its_postgresql_twin():
    pending = sqlite_migrations.pending(sqlite_utils.Database(memory=True))
    assert [name for name, _ in MIGRATIONS] == [migration.name for migration in pending]


def test_rows_have_the_same_keys_and_types_as_on_sqlite(store, tmp_path):
    reference = SqliteStore(tmp_path / "reference.sqlite3")
    reference.migrate()
    event_id, reference_id = fill(store), fill(reference)
    job, expected = store.job("vj_1"), reference.job("vj_1")
    assert job == expected | {"seq": job["seq"]} and isinstance(job["seq"], int)
    assert job["params"] == '{"model": "google/veo-3.1"}' and job["next_poll_at"] == 5.0
    assert store.outputs(["vj_1"]) == reference.outputs(["vj_1"])
    event = store.event(event_id)
    assert event == reference.event(reference_id) | {"id": event_id}
    assert event["body"] == b"\x00\xff" and isinstance(event_id, int)
    assert store.insert_event({**event, "id": 999}) is None  # same dedup key
    assert store.list_events(limit=-1) == [event]
    assert store.count_jobs_by_status() == {"pending": 1} and store.count_events() == 1
    assert store.next_due_at() == 5.0
    applied = {"job_id": "vj_1", "lag_seconds": 2.5, "verdict": "applied"}
    store.update_event(event_id, applied)
    reference.update_event(reference_id, applied)
    assert store.metrics(10.0, (1.0, 60.0)) == reference.metrics(10.0, (1.0, 60.0))
    assert store.callback_lag_by_model() == reference.callback_lag_by_model()
    assert store.oldest_work(10.0) == reference.oldest_work(10.0)


def test_list_jobs_pages_by_seq_and_a_nested_transaction_rolls_back_alone(store):
    for n in range(3):
        store.insert_job(a_job(f"vj_{n}"))
    newest = store.list_jobs(None, 2, None)
    assert [row["id"] for row in newest] == ["vj_2", "vj_1"]
    assert [row["id"] for row in store.list_jobs(None, 5, newest[-1]["seq"])] == ["vj_0"]
    with store.transaction():
        store.update_job("vj_0", {"status": "pending"})
        with pytest.raises(RuntimeError), store.transaction():
            store.update_job("vj_1", {"status": "pending"})
            raise RuntimeError("undo the inner block only")
    assert store.count_jobs_by_status() == {"pending": 1, "submitting": 2}


# Migrations ----------------------------------------------------------------------------


@pytest.fixture
def unmigrated(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A code snippet opening a store on a database nobody migrated yet."""
    if engine == "sqlite":
        yield f"SqliteStore({str(tmp_path / 'fresh.sqlite3')!r})"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database(migrated=False)
    yield f"PostgresStore.connect({url!r})"
    server.drop_database(url)


def test_four_processes_migrating_at_once_apply_each_migration_once(unmigrated):
    script = (
        "import json, sys\n"
        "from webhook_service.store.sqlite import SqliteStore\n"
        "from webhook_service.store.postgres import PostgresStore\n"
        f"store = {unmigrated}\n"
        "sys.stdin.readline()\n"  # start together
        "print(json.dumps(store.migrate()))\n"
        "print(store.ping())\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = []
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        outputs.append(out.splitlines())
    applied = [name for lines in outputs for name in json.loads(lines[0])]
    assert applied[0] == "m001_initial" and len(applied) == len(set(applied)), applied
    assert all(lines[1] == "True" for lines in outputs)


# Claims ------------------------------------------------------------------------------


def test_claims_lease_fence_and_release_as_on_sqlite(new_store):
    first, second = new_store(), new_store()
    first.insert_job(a_job("vj_1", "up-1", next_poll_at=10.0))
    first.insert_job(a_job("vj_2", "up-2", next_poll_at=20.0))
    first.insert_job(a_job("vj_3", "up-3", next_poll_at=99.0))
    [one] = first.claim_due_jobs("w1", 15.0, 45.0, 5)
    assert (one["id"], one["lease_owner"], one["fence"]) == ("vj_1", "w1", 1)
    assert [row["id"] for row in second.claim_due_jobs("w2", 25.0, 55.0, 5)] == ["vj_2"]
    assert second.claim_due_jobs("w2", 30.0, 60.0, 5) == []  # leased, not yet expired
    # The lease on vj_1 ran out: another worker takes it and the first is fenced off.
    [taken] = second.claim_due_jobs("w2", 46.0, 76.0, 1)
    assert (taken["id"], taken["fence"]) == ("vj_1", 2)
    assert not first.renew_job_lease("vj_1", 1, 100.0)
    assert not first.finish_job_claim("vj_1", 1, {"polls": 9})
    assert second.renew_job_lease("vj_1", 2, 80.0)
    assert second.finish_job_claim("vj_1", 2, {"next_poll_at": 200.0, "polls": 1})
    row = first.job("vj_1")
    assert (row["lease_owner"], row["lease_expires_at"], row["polls"]) == (None, None, 1)
    first.release_claims("w2")
    assert [row["id"] for row in first.claim_due_jobs("w1", 56.0, 86.0, 5)] == ["vj_2"]
    assert first.next_due_at() == 20.0


def test_output_claims_fence_and_release_back_to_pending(new_store):
    first, second = new_store(), new_store()
    first.insert_job(a_job("vj_1", "up-1"))
    first.create_outputs("vj_1", 3, 10.0)
    claimed = first.claim_due_outputs("w1", 10.0, 40.0, 2)
    assert [(row["idx"], row["fence"]) for row in claimed] == [(0, 1), (1, 1)]
    assert first.update_output("vj_1", 0, {"status": "downloading"}, fence=1)
    assert [row["idx"] for row in second.claim_due_outputs("w2", 11.0, 41.0, 5)] == [2]
    [again] = second.claim_due_outputs("w2", 41.0, 71.0, 1)
    assert (again["idx"], again["fence"]) == (0, 2)
    assert not first.renew_output_lease("vj_1", 0, 1, 100.0)
    assert not first.finish_output_claim("vj_1", 0, 1, {"status": "done"})
    assert first.finish_output_claim("vj_1", 1, 1, {"status": "done", "next_attempt_at": None})
    assert second.update_output("vj_1", 0, {"status": "downloading"}, fence=2)
    second.release_claims("w2")
    statuses = {row["idx"]: row["status"] for row in first.outputs(["vj_1"])["vj_1"]}
    assert statuses == {0: "pending", 1: "done", 2: "pending"}
    assert first.output("vj_1", 0)["lease_owner"] is None


def test_concurrent_claimers_never_share_an_item(new_store):
    setup = new_store()
    for n in range(40):
        setup.insert_job(a_job(f"vj_{n}", f"up-{n}"))
        setup.create_outputs(f"vj_{n}", 2, 1.0)
    stores = [new_store() for _ in range(6)]

    def claim_all(n: int) -> list[tuple[str, int]]:
        mine: list[tuple[str, int]] = []
        while rows := stores[n].claim_due_outputs(f"w{n}", 5.0, 60.0, 3):
            mine += [(row["job_id"], row["idx"]) for row in rows]
        return mine

    claims = [item for items in run_together(6, claim_all) for item in items]
    assert len(claims) == len(set(claims)) == 80


# The guarantees SQLite gets from serialised writes -----------------------------------


def test_twenty_concurrent_duplicate_callbacks_apply_once(new_store):
    new_store().insert_job(a_job("vj_1", "up-1"))
    stores = [new_store() for _ in range(20)]
    body = completed_body("up-1", outputs=3)
    receipts = run_together(20, lambda n: receive(stores[n], body, key="up-1-completed"))
    assert sorted(receipt.verdict for receipt in receipts) == ["applied"] + ["duplicate"] * 19
    store = stores[0]
    assert store.count_events() == 1 and store.job("vj_1")["status"] == "completed"
    assert len(store.outputs(["vj_1"])["vj_1"]) == 3


def test_a_callback_racing_the_record_of_the_submit_answer_is_never_left_waiting(new_store):
    recorder, receiver = new_store(), new_store()
    settings = Settings()
    for n in range(25):
        job_id, upstream_id = f"vj_{n}", f"up-{n}"
        recorder.insert_job(a_job(job_id))
        answer = {"id": upstream_id, "status": "pending"}

        def race(
            side: int, job_id: str = job_id, upstream_id: str = upstream_id, answer: Any = answer
        ) -> Any:
            if side == 0:
                return submission.record_accepted(recorder, settings, job_id, answer, time.time())
            return receive(receiver, completed_body(upstream_id))

        run_together(2, race)
        [event] = recorder.list_events(upstream_id=upstream_id)
        assert event["verdict"] == "applied", f"round {n}: the callback was left {event}"
        assert recorder.job(job_id)["status"] == "completed"


def test_concurrent_submits_with_one_key_create_one_job(app, sandbox, store):
    server = LiveServer(app)
    headers = {**AUTH, "Idempotency-Key": "order-99"}
    try:
        answers = run_together(
            8,
            lambda n: httpx.post(f"{server.url}/api/jobs", json=VALID, headers=headers, timeout=30),
        )
    finally:
        server.stop()
    codes = sorted(answer.status_code for answer in answers)
    assert codes.count(202) == 1 and set(codes) <= {200, 202, 409}, codes
    named = {body.get("id") or body["error"]["details"]["job_id"] for body in
             (answer.json() for answer in answers)}  # fmt: skip
    assert len(named) == 1
    assert sum(store.count_jobs_by_status().values()) == 1
    assert sandbox.stats()["submits"] == 1


# A database that goes away ------------------------------------------------------------


def test_an_unreachable_database_is_unavailable_and_never_shows_its_password():
    url = f"postgres://someone:hunter2-secret@127.0.0.1:{free_port()}/nothing"
    store = PostgresStore.connect(url, pool_size=1, timeout=0.5)
    try:
        assert store.describe().startswith("PostgreSQL database nothing on 127.0.0.1:")
        assert "hunter2" not in repr(store) + store.describe()
        assert not store.ping()
        with pytest.raises(StoreUnavailable) as migrating:
            store.migrate()
        with pytest.raises(StoreUnavailable) as reading:
            store.job("vj_1")
        with pytest.raises(StoreUnavailable), store.transaction():
            pass
    finally:
        PostgresStore.close_pools(url)
    for error in (migrating.value, reading.value):
        assert "hunter2" not in str(error) and "127.0.0.1" in str(error)


@pytest.fixture
def pg_app(
    postgres_server: PostgresServer, base_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Any, str]]:
    """An app on its own PostgreSQL database, and that database's URL."""
    url = postgres_server.create_database()
    app = create_app({**base_env, "DATABASE_URL": url, "TESTING": True})
    yield app, url
    postgres_server.drop_database(url)


def set_connections(server: PostgresServer, url: str, allowed: bool) -> None:
    """Refuse (and cut) or allow again connections to one database, as an outage would."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


@pytest.mark.sqlite_only  # sets up its own PostgreSQL database
def test_while_the_database_is_away_healthz_and_the_api_answer_503_then_recover(
    pg_app, postgres_server
):
    app, url = pg_app
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/jobs", headers=AUTH).status_code == 200
    set_connections(postgres_server, url, allowed=False)
    try:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.get_json()["error"]["code"] == "database_unavailable"
        answer = client.get("/api/jobs", headers=AUTH)
        assert answer.status_code == 503
        assert answer.get_json()["error"]["code"] == "database_unavailable"
    finally:
        set_connections(postgres_server, url, allowed=True)
    deadline = time.monotonic() + 30
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the app never saw the database come back"
        time.sleep(0.1)
    assert client.get("/api/jobs", headers=AUTH).status_code == 200


@pytest.mark.sqlite_only  # sets up its own PostgreSQL database
def test_pooled_connections_the_server_closed_while_idle_are_skipped_not_failed(
    pg_app, postgres_server
):
    """A transaction sends BEGIN with its first read: dead idle connections are found first."""
    _, url = pg_app
    store = PostgresStore(url, pool_size=4)
    held = threading.Barrier(4)

    def hold(n: int) -> None:  # four transactions at once: the pool opens four connections
        with store.transaction():
            store.insert_job(a_job(f"vj_{n}"))
            held.wait(timeout=30)

    run_together(4, hold)
    with psycopg.connect(postgres_server.admin_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [url.rsplit("/", 1)[1]],
        )
        deadline = time.monotonic() + 10
        while backends_of(admin, url) and time.monotonic() < deadline:
            time.sleep(0.05)
    for n in range(8):  # every pooled connection is dead; none of these may fail
        with store.transaction():
            store.update_job(f"vj_{n % 4}", {"status": "pending"})
            assert store.job(f"vj_{n % 4}")["status"] == "pending"
    assert store.count_jobs_by_status() == {"pending": 4}
    store.close()


@pytest.mark.sqlite_only  # sets up its own PostgreSQL database
def test_a_process_holding_over_1024_descriptors_still_writes(pg_app):
    """gunicorn may hold a thousand client sockets: the idle check must not use select()."""
    _, url = pg_app
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip("this machine allows fewer than 1200 open files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        store = PostgresStore(url, pool_size=1)
        with store.transaction():
            store.insert_job(a_job("vj_1"))
        with store.transaction():  # a pooled connection, its descriptor past 1024
            store.update_job("vj_1", {"status": "pending"})
        assert store.job("vj_1")["status"] == "pending"
        store.close()
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_refused_writes_never_spoil_the_connection_for_later_transactions(new_store, database_url):
    """On PostgreSQL a refused write is queued in a pipeline; psycopg prepares a statement on
    its fifth run, and one skipped by an aborted pipeline must not haunt the connection."""
    # One connection, so every transaction runs on the one a refusal may have spoiled.
    store = PostgresStore(database_url, pool_size=1) if database_url else new_store()
    store.insert_job(a_job("vj_1", upstream_id="up-1"))
    store.insert_job(a_job("vj_2", upstream_id="up-2"))
    for n in range(14):
        if n % 2 == 0:
            with pytest.raises(REFUSED):
                with store.transaction():
                    store.update_job("vj_1", {"upstream_id": "up-2"})  # unique: refused
                    store.update_job("vj_1", {"status": f"s{n}"})
                    store.job("vj_1")
        else:
            with store.transaction():
                store.update_job("vj_1", {"status": f"s{n}"})
                assert store.job("vj_1")["status"] == f"s{n}"
    assert store.job("vj_1")["status"] == "s13" and store.job("vj_1")["upstream_id"] == "up-1"
    store.close()


def test_a_refused_write_in_a_nested_transaction_undoes_only_that_block(store):
    store.insert_job(a_job("vj_1", upstream_id="up-1"))
    store.insert_job(a_job("vj_2", upstream_id="up-2"))
    with store.transaction():
        store.update_job("vj_1", {"status": "pending"})
        with pytest.raises(REFUSED):
            with store.transaction():
                store.update_job("vj_2", {"status": "failed"})
                store.update_job("vj_1", {"upstream_id": "up-2"})  # unique: refused
        store.update_job("vj_2", {"status": "running"})
    assert store.job("vj_1")["status"] == "pending" and store.job("vj_1")["upstream_id"] == "up-1"
    assert store.job("vj_2")["status"] == "running"


def backends_of(admin: psycopg.Connection[Any], url: str) -> int:
    [(count,)] = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        [url.rsplit("/", 1)[1]],
    ).fetchall()
    return int(count)


def test_a_write_that_fails_after_its_call_returned_still_undoes_the_transaction(store):
    """Writes whose answer nobody reads may report their error later (at COMMIT on
    PostgreSQL): the block still raises, and nothing of it is kept."""
    store.insert_job(a_job("vj_1"))
    with pytest.raises(REFUSED):
        with store.transaction():
            store.update_job("vj_1", {"status": "pending"})
            store.update_job("vj_1", {"created_at": None})  # NOT NULL: refused
    assert store.job("vj_1")["status"] == "submitting"
    with store.transaction():  # the connection is usable again
        store.update_job("vj_1", {"status": "pending"})
    assert store.job("vj_1")["status"] == "pending"


def backends(spy: psycopg.Connection[Any]) -> int:
    """How many other connections the spy's database has now."""
    [(count,)] = spy.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return int(count)


def test_a_forked_process_opens_its_own_connections(store, database_url):
    """A gunicorn worker forked after the master used the store must not share its sockets."""
    store.insert_job(a_job("vj_parent"))
    child = os.fork()
    if child == 0:  # the child: work through the store object it inherited, then leave
        code = 1
        try:
            spy = psycopg.connect(database_url, autocommit=True) if database_url else None
            before = backends(spy) if spy else 0
            store.insert_job(a_job("vj_child"))
            code = 0 if store.job("vj_parent") is not None else 2
            if spy:  # the child connected for itself instead of using the parent's socket
                code = code or (0 if backends(spy) > before else 3)
                spy.close()
                PostgresStore.close_pools()  # as at the child's exit
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.job("vj_child") is not None
    with store.transaction():
        store.update_job("vj_parent", {"status": "pending"})
    assert store.count_jobs_by_status() == {"pending": 1, "submitting": 1}


def test_an_idle_worker_is_woken_by_new_work_committed_elsewhere(new_store):
    """wait_for_change returns soon after another connection queues work (both engines)."""
    waiter, writer = new_store(), new_store()
    woke: list[bool] = []

    def wait() -> None:
        woke.append(waiter.wait_for_change(20.0, lambda: False))

    thread = threading.Thread(target=wait)
    thread.start()
    deadline, n = time.monotonic() + 15, 0
    while thread.is_alive() and time.monotonic() < deadline:
        n += 1  # commit new work until the waiter notices (it may not be listening yet)
        with writer.transaction():
            writer.insert_job(a_job(f"vj_{n}"))
            writer.create_outputs(f"vj_{n}", 1, time.time())
        thread.join(0.2)
    thread.join(20)
    assert woke == [True]


@pytest.mark.sqlite_only
def test_work_committed_elsewhere_rings_an_idle_sqlite_worker_without_its_poll():
    """With its data_version poll turned down to once an hour, the doorbell alone wakes it;
    a socket left by a dead worker is removed on the way."""
    with tempfile.TemporaryDirectory(prefix="ring-") as short:  # socket paths are short
        ring_an_idle_worker(Path(short) / "db.sqlite3")


def ring_an_idle_worker(path: Path) -> None:
    writer = SqliteStore(path)
    writer.migrate()
    folder = wakeups.folder_for(path)
    folder.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(folder / "dead-worker"))
    stale.close()  # its file stays, as after a kill -9
    (folder / "notes.txt").write_text("not a socket: left alone")
    waiter = SqliteStore(path, change_check_seconds=3600)
    woke: list[bool] = []
    thread = threading.Thread(target=lambda: woke.append(waiter.wait_for_change(60, lambda: False)))
    thread.start()
    deadline = time.monotonic() + 10
    while not any(folder.glob(f"{os.getpid()}-*")):  # the waiter has bound its socket
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with writer.transaction():
        writer.insert_job(a_job("vj_1"))
        writer.create_outputs("vj_1", 1, time.time())
    thread.join(10)
    assert woke == [True]
    assert not (folder / "dead-worker").exists()
    waiter.close()
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # closing removed its socket
    writer.close()


@pytest.mark.sqlite_only
def test_doorbells_of_one_process_and_thread_never_share_a_socket():
    """As in two worker containers that are both pid 1 on one shared volume."""
    with tempfile.TemporaryDirectory(prefix="ring-") as short:
        folder = Path(short) / "db.sqlite3.wake"
        first, second = wakeups.Doorbell(folder), wakeups.Doorbell(folder)
        assert first.listening and second.listening and first.path != second.path
        wakeups.ring(folder)
        assert first.wait(5) and second.wait(5)
        first.close()
        assert second.path.exists()  # closing one never removes the other's socket
        wakeups.ring(folder)
        assert second.wait(5)
        second.close()


def test_waiting_for_change_gives_up_at_the_timeout_or_when_stopped(store):
    waiter = store
    assert waiter.wait_for_change(0.2, lambda: False) is False
    assert waiter.wait_for_change(20.0, lambda: True) is False


@pytest.mark.sqlite_only
def test_a_frozen_process_holding_the_write_lock_makes_writes_fail_not_hang(tmp_path):
    store = SqliteStore(tmp_path / "db.sqlite3", busy_timeout_ms=300)
    store.migrate()
    holder = subprocess.Popen(  # another process takes the lock file and then hangs
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
            str(tmp_path / "db.sqlite3.lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(StoreUnavailable):
            store.release_claims("anyone")
    finally:
        holder.kill()
        holder.wait()
    store.release_claims("anyone")  # and writes work again once it is gone


def test_callback_counts_keep_the_verdict_at_receipt_so_they_never_go_down(store):
    assert receive(store, completed_body("job-later")).verdict == "waiting"
    counted = store.metrics(time.time(), (1.0,))["callbacks"]
    assert counted == {"waiting": 1}
    with store.transaction():
        store.insert_job(a_job("vj_later", upstream_id="job-later"))
        assert events.apply_waiting(store, "vj_later", time.time()) == 1
    assert store.list_events()[0]["verdict"] == "applied"
    assert store.metrics(time.time(), (1.0,))["callbacks"] == counted  # a counter never drops
