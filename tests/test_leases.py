"""The lease and fence protocol: a worker that lost its claim never writes.

Two workers share one database; the first stalls on a real loopback upstream held
mid-answer, its lease runs out on an injected clock, the second takes the work over.
"""

from __future__ import annotations

import threading
import time

import pytest
from hostile_upstream import Answer, hostile_upstream_fixture, ranged_file  # noqa: F401

from webhook_service import create_app
from webhook_service.config import load_settings
from webhook_service.modelgates import ModelGatesClient
from webhook_service.store import open_store
from webhook_service.worker import Worker

LEASE = 30.0
T0 = 1_000_000.0


@pytest.fixture
def settings(base_env, hostile_upstream):
    env = {**base_env, "MODELGATES_BASE_URL": hostile_upstream.base_url}
    create_app({**env, "TESTING": True})
    return load_settings(env)


@pytest.fixture
def store(settings):
    opened = open_store(settings)
    yield opened
    opened.close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_worker(settings, clock, name):
    client = ModelGatesClient(settings.modelgates_base_url, "key", timeout=10, sleep=lambda s: 0)
    return Worker(settings, client, lease_seconds=LEASE, clock=clock, rand=lambda: 0.5, owner=name)


def add_job(store, status="in_progress", next_poll_at=T0, outputs=0):
    with store.transaction():
        store.insert_job(
            {
                "id": "vj_1",
                "upstream_id": "job-1",
                "callback_token": "token-1",
                "client": "client",
                "request_hash": "x",
                "status": status,
                "submit_outcome": "accepted",
                "model": "google/veo-3.1",
                "params": {"model": "google/veo-3.1"},
                "created_at": T0 - 100,
                "updated_at": T0 - 100,
                "next_poll_at": next_poll_at,
                "outputs_known": int(bool(outputs)),
            }
        )
        if outputs:
            store.create_outputs("vj_1", outputs, T0)


def in_background(work):
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_stale_poll_claim_never_writes(settings, store, hostile_upstream):
    released = threading.Event()
    completed = {"id": "job-1", "status": "completed", "unsigned_urls": ["a", "b"]}
    hostile_upstream.on(
        "GET",
        "/videos/job-1",
        Answer.json(completed, hold_after=0, gate=released),  # the first poll stalls
        Answer.json({"id": "job-1", "status": "in_progress"}),
    )
    add_job(store)
    stalled = make_worker(settings, Clock(T0), "stalled")
    first = in_background(lambda: stalled.run_once(T0))
    wait_until(lambda: len(hostile_upstream.seen("GET", "/videos/job-1")) == 1)

    later = T0 + LEASE + 1  # the stalled worker's lease has run out
    taker = make_worker(settings, Clock(later), "taker")
    assert taker.run_once(later) == 1
    after_takeover = store.job("vj_1")
    assert after_takeover["status"] == "in_progress" and after_takeover["polls"] == 1

    released.set()  # the stalled poll now learns "completed": too late, its claim is gone
    first.join(10)
    assert not first.is_alive()
    job = store.job("vj_1")
    assert job["status"] == "in_progress" and job["polls"] == 1
    assert job["next_poll_at"] == after_takeover["next_poll_at"]
    assert store.outputs(["vj_1"])["vj_1"] == []


def test_a_poll_claim_taken_over_before_its_turn_is_skipped(settings, store, hostile_upstream):
    hostile_upstream.on("GET", "/videos/job-1", Answer.json({"id": "job-1", "status": "failed"}))
    add_job(store)
    clock = Clock(T0)
    worker = make_worker(settings, clock, "slow")
    claimed = store.claim_due_jobs("slow", T0, T0 + LEASE, 10)
    store.claim_due_jobs("other", T0 + LEASE + 1, T0 + 2 * LEASE, 10)  # taken over meanwhile
    worker._round = (T0, T0)
    clock.now = T0 + LEASE + 2
    worker._poll_one(claimed[0], T0)
    assert hostile_upstream.seen("GET", "/videos/job-1") == []  # never asked upstream
    assert store.job("vj_1")["status"] == "in_progress"


def test_a_long_download_keeps_its_claim_by_renewing_it(settings, store, hostile_upstream):
    video = bytes(range(256)) * 4096  # 1 MiB
    released = threading.Event()
    hostile_upstream.on(
        "GET", "/videos/job-1/content", ranged_file(video, hold_after=512 * 1024, gate=released)
    )
    add_job(store, status="completed", next_poll_at=None, outputs=1)
    clock = Clock(T0)
    worker = make_worker(settings, clock, "long")
    worker.run_once(T0, wait=False)
    wait_until(lambda: store.output("vj_1", 0)["status"] == "downloading")

    # Time passes in steps shorter than the lease; the download renews as it goes.
    for _ in range(6):
        clock.now += LEASE / 2
        wait_until(lambda: store.output("vj_1", 0)["lease_expires_at"] > clock.now)
        assert store.claim_due_outputs("thief", clock.now, clock.now + LEASE, 10) == []
        released.set() if _ == 5 else None
    wait_until(lambda: store.output("vj_1", 0)["status"] == "downloaded")
    worker.stop()
    assert store.output("vj_1", 0)["bytes"] == len(video)


def test_a_stalled_download_whose_claim_was_taken_over_never_commits(
    settings, store, hostile_upstream
):
    stale_bytes = b"s" * (1024 * 1024)  # what the stalled worker is given
    good_bytes = b"g" * (1024 * 1024)  # what the worker that takes over is given
    released = threading.Event()
    hostile_upstream.on(
        "GET",
        "/videos/job-1/content",
        ranged_file(stale_bytes, hold_after=len(stale_bytes) - 1, gate=released),
        ranged_file(good_bytes),
    )
    add_job(store, status="completed", next_poll_at=None, outputs=1)
    stalled = make_worker(settings, Clock(T0), "stalled")  # its clock stands still: no renewal
    stalled.run_once(T0, wait=False)
    wait_until(lambda: store.output("vj_1", 0)["status"] == "downloading")

    later = T0 + LEASE + 1
    taker = make_worker(settings, Clock(later), "taker")
    taker.run_once(later)  # takes the expired claim over and downloads the whole file
    done = store.output("vj_1", 0)
    assert done["status"] == "downloaded" and done["lease_owner"] is None

    released.set()  # the stalled download gets its last byte: it must not commit
    wait_until(lambda: all(future.done() for future in stalled._in_flight))
    stalled.stop()
    assert store.output("vj_1", 0) == done  # nothing the stalled worker did reached the row
    with taker.media.open("vj_1", 0) as stored:
        assert stored.read() == good_bytes  # nor the stored file


def test_a_stale_download_that_then_fails_writes_nothing(settings, store, hostile_upstream):
    good_bytes = b"g" * (1024 * 1024)
    released = threading.Event()
    hostile_upstream.on(
        "GET",
        "/videos/job-1/content",
        Answer.error(404, hold_after=0, gate=released),  # the stalled worker's answer
        ranged_file(good_bytes),
    )
    hostile_upstream.on("GET", "/videos/job-1", Answer.json({"id": "job-1", "status": "expired"}))
    add_job(store, status="completed", next_poll_at=None, outputs=1)
    stalled = make_worker(settings, Clock(T0), "stalled")
    stalled.run_once(T0, wait=False)
    wait_until(lambda: len(hostile_upstream.seen("GET", "/videos/job-1/content")) == 1)

    later = T0 + LEASE + 1
    taker = make_worker(settings, Clock(later), "taker")
    taker.run_once(later)
    done = store.output("vj_1", 0)
    assert done["status"] == "downloaded" and done["lease_owner"] is None

    released.set()  # the stalled download now fails, and upstream even says "expired"
    wait_until(lambda: all(future.done() for future in stalled._in_flight))
    stalled.stop()
    assert len(hostile_upstream.seen("GET", "/videos/job-1")) == 1  # it did reach its decision
    assert store.output("vj_1", 0) == done  # which was not recorded over the new claim's


def test_a_download_whose_claim_was_taken_over_stops_renewing_it(settings, store, hostile_upstream):
    video = b"v" * (1024 * 1024)
    released = threading.Event()
    hostile_upstream.on(
        "GET", "/videos/job-1/content", ranged_file(video, hold_after=1024, gate=released)
    )
    add_job(store, status="completed", next_poll_at=None, outputs=1)
    clock = Clock(T0)
    stalled = make_worker(settings, clock, "stalled")
    stalled.run_once(T0, wait=False)
    wait_until(lambda: len(stalled.leases._leases) == 1)  # the download is under way
    [lease] = stalled.leases._leases.values()

    later = T0 + LEASE + 1  # the stalled worker's clock stood still: its lease ran out
    [taken] = store.claim_due_outputs("taker", later, later + LEASE, 1)
    clock.now = later + LEASE  # now its heartbeat tries to renew, with its old fence
    wait_until(lambda: lease.lost.is_set())
    row = store.output("vj_1", 0)
    assert (row["lease_owner"], row["fence"]) == ("taker", taken["fence"])
    assert row["lease_expires_at"] == later + LEASE  # the new claim's lease, not extended
    released.set()
    wait_until(lambda: all(future.done() for future in stalled._in_flight))
    stalled.stop()
    assert store.output("vj_1", 0)["status"] == "downloading"  # the taker's, untouched


def test_a_download_after_the_heartbeat_went_idle_starts_it_again(
    settings, store, hostile_upstream
):
    video = b"v" * 4096
    hostile_upstream.on("GET", "/videos/job-1/content", ranged_file(video))
    add_job(store, status="completed", next_poll_at=None, outputs=2)
    store.update_output("vj_1", 1, {"next_attempt_at": T0 + 3600})  # not due yet
    worker = make_worker(settings, Clock(T0), "w")
    worker.run_once(T0)
    assert store.output("vj_1", 0)["status"] == "downloaded"

    def heartbeat_running() -> bool:
        return any(t.name == "lease-heartbeat" and t.is_alive() for t in threading.enumerate())

    wait_until(lambda: not heartbeat_running())  # nothing to renew: it stopped
    worker.clock = Clock(T0 + 3600)
    worker.run_once(T0 + 3600)
    worker.stop()
    assert store.output("vj_1", 1)["status"] == "downloaded"
    assert store.output("vj_1", 1)["bytes"] == len(video)


def test_one_lost_claim_does_not_stop_the_others_from_being_renewed(
    settings, store, hostile_upstream
):
    video = b"v" * (1024 * 1024)
    released = threading.Event()
    hostile_upstream.on(
        "GET", "/videos/job-1/content", ranged_file(video, hold_after=1024, gate=released)
    )
    add_job(store, status="completed", next_poll_at=None, outputs=2)
    clock = Clock(T0)
    # A read timeout longer than any wait here: the lost download stays stuck in its read.
    client = ModelGatesClient(settings.modelgates_base_url, "key", timeout=120, sleep=lambda s: 0)
    worker = Worker(settings, client, lease_seconds=LEASE, clock=clock, rand=lambda: 0.5, owner="w")
    worker.run_once(T0, wait=False)
    wait_until(lambda: len(worker.leases._leases) == 2)
    (_, lost_index), (_, kept_index) = list(worker.leases._leases)  # the first looked at is lost
    fence = store.output("vj_1", lost_index)["fence"]
    store.update_output("vj_1", lost_index, {"lease_owner": "thief", "fence": fence + 1})

    clock.now = T0 + LEASE / 2
    wait_until(lambda: store.output("vj_1", kept_index)["lease_expires_at"] == clock.now + LEASE)
    clock.now = T0 + LEASE  # the kept download is due again, behind the lost one
    wait_until(lambda: store.output("vj_1", kept_index)["lease_expires_at"] == clock.now + LEASE)
    assert store.output("vj_1", lost_index)["lease_owner"] == "thief"
    released.set()
    wait_until(lambda: all(future.done() for future in worker._in_flight))
    worker.stop()
    assert store.output("vj_1", kept_index)["status"] == "downloaded"
    assert store.output("vj_1", lost_index)["lease_owner"] == "thief"


def test_notification_claims_carry_their_owner_and_a_fence(store):
    add_job(store)
    store.insert_notification(
        {
            "job_id": "vj_1",
            "url": "http://127.0.0.1:9/hook",
            "webhook_id": "msg_1",
            "event_type": "job.completed",
            "body": "{}",
            "next_attempt_at": T0,
            "created_at": T0,
            "updated_at": T0,
        }
    )
    [first] = store.claim_due_notifications("one", T0, T0 + LEASE, 5)
    assert (first["lease_owner"], first["lease_expires_at"]) == ("one", T0 + LEASE)
    assert store.claim_due_notifications("two", T0 + 1, T0 + LEASE, 5) == []
    store.release_claims("one")  # a worker stopping gives its claims back at once
    [second] = store.claim_due_notifications("two", T0 + 1, T0 + LEASE, 5)
    assert second["fence"] == first["fence"] + 1
    assert not store.finish_notification_claim("vj_1", first["fence"], {"attempts": 9})
    assert store.finish_notification_claim("vj_1", second["fence"], {"attempts": 1})
    row = store.notifications(["vj_1"])["vj_1"]
    assert (row["attempts"], row["lease_owner"], row["lease_expires_at"]) == (1, None, None)


def test_a_download_claim_lost_before_it_starts_touches_nothing(settings, store, hostile_upstream):
    video = b"v" * 4096
    hostile_upstream.on("GET", "/videos/job-1/content", ranged_file(video))
    add_job(store, status="completed", next_poll_at=None, outputs=1)
    [stale] = store.claim_due_outputs("slow", T0, T0 + LEASE, 1)  # then it stalls
    later = T0 + LEASE + 1
    make_worker(settings, Clock(later), "taker").run_once(later)
    done = store.output("vj_1", 0)
    assert done["status"] == "downloaded"

    make_worker(settings, Clock(later), "slow")._download(stale)  # its turn comes at last
    assert len(hostile_upstream.seen("GET", "/videos/job-1/content")) == 1  # never asked
    assert store.output("vj_1", 0) == done


def test_a_stopping_worker_abandons_its_download_and_keeps_nothing(
    settings, store, hostile_upstream
):
    video = b"v" * (1024 * 1024)
    released = threading.Event()
    hostile_upstream.on(
        "GET", "/videos/job-1/content", ranged_file(video, hold_after=1024, gate=released)
    )
    add_job(store, status="completed", next_poll_at=None, outputs=1)
    worker = make_worker(settings, Clock(T0), "w")
    worker.run_once(T0, wait=False)
    wait_until(lambda: store.output("vj_1", 0)["status"] == "downloading")
    worker.stop()
    released.set()  # bytes flow again: the download notices the stop and lets go
    wait_until(lambda: all(future.done() for future in worker._in_flight))
    output = store.output("vj_1", 0)
    assert (output["status"], output["lease_owner"], output["bytes"]) == ("pending", None, None)
    assert not worker.media.exists("vj_1", 0)
