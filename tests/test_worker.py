"""The worker against the sandbox: polling fallback, leases, verified downloads."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from conftest import AUTH

from webhook_service import create_app
from webhook_service.modelgates import ModelGatesClient
from webhook_service.worker import Worker, poll_delay

VALID = {"model": "google/veo-3.1", "prompt": "waves", "duration": 4, "resolution": "720p"}


def sandbox_options(**parameters):
    return {"provider": {"options": {"sandbox": {"parameters": parameters}}}}


@pytest.fixture
def env(env):
    """Poll as soon as a job is submitted, so tests need not wait."""
    return {**env, "POLL_AFTER_SECONDS": "0", "POLL_INTERVAL_SECONDS": "1"}


def make_worker(app, **kwargs):
    settings = app.extensions["webhook_service"].settings
    client = ModelGatesClient(
        settings.modelgates_base_url, "sandbox-key", timeout=5, sleep=lambda s: None
    )
    return Worker(
        settings, client, lease_seconds=kwargs.pop("lease_seconds", 30), rand=lambda: 0.5, **kwargs
    )


@pytest.fixture
def worker(app):
    made = make_worker(app)
    yield made
    made.stop()


def submit(client, **parameters):
    body = {**VALID, **(sandbox_options(**parameters) if parameters else {})}
    response = client.post("/api/jobs", json=body, headers=AUTH)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def job_of(client, job_id):
    return client.get(f"/api/jobs/{job_id}", headers=AUTH).get_json()


def all_downloaded(client, job_id, count=1):
    outputs = job_of(client, job_id)["outputs"]
    return len(outputs) == count and all(o["status"] == "downloaded" for o in outputs)


def drive(worker, until, rounds=30, step=None):
    """Run worker rounds (moving its clock by ``step`` each time) until ``until()``."""
    now = time.time()
    for _ in range(rounds):
        if step is not None:
            worker.clock = lambda at=now: at
        worker.run_once(now)
        if until():
            return
        now += step if step is not None else 0.05
        time.sleep(0.02 if step is None else 0)
    raise AssertionError("condition not reached")


def assert_downloaded(app, sandbox, job):
    media_dir = app.extensions["webhook_service"].settings.media_dir
    for output in job["outputs"]:
        assert output["status"] == "downloaded", output
        path = media_dir / job["id"] / f"{output['index']}.mp4"
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
        assert output["sha256"] == sandbox.expected_sha256(job["upstream_id"], output["index"])
        assert len(data) == output["bytes"]
    leftovers = list(media_dir.glob("**/*.part-*")) if media_dir.exists() else []
    assert leftovers == []


def test_poll_delay_backs_off_with_jitter_to_a_cap_and_honours_retry_after():
    assert poll_delay(0, 30, lambda: 0.5) == 30
    assert poll_delay(1, 30, lambda: 0.5) == 60
    assert poll_delay(10, 30, lambda: 0.5) == 300
    assert poll_delay(0, 30, lambda: 0.0) == pytest.approx(24)
    assert poll_delay(0, 30, lambda: 1.0) == pytest.approx(36)
    assert poll_delay(0, 30, lambda: 0.5, retry_after=90) == 90


def test_when_callbacks_never_arrive_every_job_completes_through_polling(app, sandbox, worker):
    sandbox.settings.drop_callbacks = 1.0
    client = app.test_client()
    jobs = [submit(client), submit(client, outputs=2), submit(client, outcome="failed")]
    sandbox.advance(10)
    drive(
        worker,
        lambda: all(
            all_downloaded(client, j["id"], count)
            if count
            else job_of(client, j["id"])["status"] == "failed"
            for j, count in zip(jobs, [1, 2, 0], strict=True)
        ),
    )
    done = [job_of(client, j["id"]) for j in jobs]
    assert [j["status"] for j in done] == ["completed", "completed", "failed"]
    assert {j["completion_source"] for j in done} == {"poll"}
    assert [len(j["outputs"]) for j in done] == [1, 2, 0]
    assert done[2]["error"]
    for job in done[:2]:
        assert_downloaded(app, sandbox, job)


def test_downloaded_video_is_served_with_ranges(app, sandbox, worker):
    client = app.test_client()
    job = submit(client)
    sandbox.advance(10)
    drive(
        worker,
        lambda: all_downloaded(client, job["id"]),
    )
    url = f"/api/jobs/{job['id']}/videos/0"
    whole = client.get(url, headers=AUTH)
    assert whole.status_code == 200 and whole.mimetype == "video/mp4"
    assert whole.data[4:8] == b"ftyp"
    part = client.get(url, headers={**AUTH, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.data == whole.data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(whole.data)}"
    assert client.get(f"/api/jobs/{job['id']}/videos/1", headers=AUTH).status_code == 404


def test_upstream_429_500_and_refused_connections_only_delay_polling(app, sandbox, worker):
    client = app.test_client()
    job = submit(client, callback="drop")
    sandbox.advance(10)
    sandbox.add_fault(endpoint="poll", status=429, retry_after=120)
    now = time.time()
    worker.run_once(now)
    row = worker.store.job(job["id"])
    assert row["status"] == "pending" and row["next_poll_at"] >= now + 120
    sandbox.add_fault(endpoint="poll", status=500, count=5)
    worker.run_once(now + 121)
    assert worker.store.job(job["id"])["status"] == "pending"
    settings = app.extensions["webhook_service"].settings
    unreachable = Worker(settings, ModelGatesClient("http://127.0.0.1:9/api/v1", "k"))
    unreachable.run_once(now + 1000)  # connection refused: the poll is only put off
    row = worker.store.job(job["id"])
    assert row["status"] == "pending" and row["next_poll_at"] > now + 1000
    drive(worker, lambda: job_of(client, job["id"])["status"] == "completed", step=600)
    assert job_of(client, job["id"])["completion_source"] == "poll"


def test_polling_a_job_upstream_never_heard_of_fails_it_after_a_few_404s(app, sandbox, worker):
    client = app.test_client()
    job = submit(client, callback="drop")
    sandbox.add_fault(endpoint="poll", status=404, count=10)
    drive(worker, lambda: job_of(client, job["id"])["status"] == "failed", step=600)
    final = job_of(client, job["id"])
    assert "404" in final["error"] and final["finished_at"]


def test_a_callback_arriving_stops_the_polling(live, sandbox):
    app, server = live
    client = app.test_client()
    job = submit(client)
    sandbox.advance(10)
    deadline = time.time() + 10
    while job_of(client, job["id"])["status"] != "completed" and time.time() < deadline:
        time.sleep(0.05)
    row = job_of(client, job["id"])
    assert row["status"] == "completed" and row["completion_source"] == "callback"
    store = make_worker(app).store
    assert store.job(job["id"])["next_poll_at"] is None


def test_callback_and_poll_at_the_same_moment_make_one_transition_and_one_download(live, sandbox):
    app, server = live
    client = app.test_client()
    job = submit(client, outputs=2)
    workers = [make_worker(app) for _ in range(2)]
    sandbox.advance(10)  # the callback is now being delivered while the workers poll
    threads = [threading.Thread(target=w.run_once, args=(time.time() + 1,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    drive(
        workers[0],
        lambda: all_downloaded(client, job["id"], 2),
    )
    final = job_of(client, job["id"])
    assert final["status"] == "completed" and len(final["outputs"]) == 2
    assert_downloaded(app, sandbox, final)
    counts = sandbox.job(final["upstream_id"])["content_requests"]
    assert sorted(counts.values()) == [1, 1]


def test_a_download_cut_off_half_way_resumes_with_range(app, sandbox, worker):
    sandbox.settings.content_size = 3 * 1024 * 1024
    client = app.test_client()
    job = submit(client)
    sandbox.advance(10)
    sandbox.add_fault(endpoint="content", status=200, truncate_at=1024 * 1024)
    drive(
        worker,
        lambda: all_downloaded(client, job["id"]),
    )
    final = job_of(client, job["id"])
    assert final["outputs"][0]["bytes"] == 3 * 1024 * 1024
    assert_downloaded(app, sandbox, final)


def test_a_200_answer_to_a_range_request_starts_over(app, sandbox, worker):
    sandbox.settings.content_size = 2 * 1024 * 1024
    sandbox.settings.range_support = "ignore"
    client = app.test_client()
    job = submit(client)
    sandbox.advance(10)
    sandbox.add_fault(endpoint="content", status=200, truncate_at=700_000)
    drive(
        worker,
        lambda: all_downloaded(client, job["id"]),
    )
    assert_downloaded(app, sandbox, job_of(client, job["id"]))


def test_404_on_content_right_after_completion_is_retried(app, sandbox, worker):
    client = app.test_client()
    job = submit(client, callback="drop")
    sandbox.advance(10)
    sandbox.add_fault(endpoint="content", status=404, count=2)
    drive(
        worker,
        lambda: all_downloaded(client, job["id"]),
        step=120,
    )
    assert_downloaded(app, sandbox, job_of(client, job["id"]))


def test_an_unwritable_media_dir_is_a_clear_error_and_the_output_stays_pending(
    env, sandbox, tmp_path
):
    media = tmp_path / "media"
    app = create_app({**env, "MEDIA_DIR": str(media)})
    media.rmdir()  # the disk goes away after start: a file now stands where the folder was
    media.write_text("not a folder")
    worker = make_worker(app)
    client = app.test_client()
    job = submit(client, callback="drop")
    sandbox.advance(10)
    drive(
        worker,
        lambda: (
            job_of(client, job["id"])["outputs"][:1]
            and job_of(client, job["id"])["outputs"][0]["error"]
        ),
    )
    [output] = job_of(client, job["id"])["outputs"]
    assert output["status"] == "pending" and "cannot store the video" in output["error"]
    assert output["sha256"] is None
    assert client.get(f"/api/jobs/{job['id']}/videos/0", headers=AUTH).status_code == 409


def test_downloads_give_up_only_after_the_configured_time(env, sandbox):
    app = create_app({**env, "DOWNLOAD_GIVE_UP_SECONDS": "1000"})
    worker = make_worker(app)
    client = app.test_client()
    job = submit(client, callback="drop")
    sandbox.advance(10)
    sandbox.add_fault(endpoint="content", status=500, count=1000)
    now = time.time()
    worker.run_once(now)  # poll: completed
    worker.run_once(now + 1)  # first failed download
    assert job_of(client, job["id"])["outputs"][0]["status"] == "pending"
    drive(worker, lambda: job_of(client, job["id"])["outputs"][0]["status"] == "failed", step=300)
    output = job_of(client, job["id"])["outputs"][0]
    assert "gave up" in output["error"]
    assert job_of(client, job["id"])["status"] == "completed"


def test_two_workers_never_download_the_same_output_twice(app, sandbox):
    client = app.test_client()
    jobs = [submit(client, outputs=3, callback="drop") for _ in range(3)]
    sandbox.advance(10)
    workers = [make_worker(app, concurrency=2) for _ in range(2)]
    stop = time.time() + 20

    def loop(worker):
        while (
            time.time() < stop
            and not all(
                o["status"] == "downloaded"
                for j in jobs
                for o in job_of(client, j["id"])["outputs"]
            )
            or not all(job_of(client, j["id"])["outputs"] for j in jobs)
        ):
            worker.run_once()

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for job in jobs:
        final = job_of(client, job["id"])
        assert_downloaded(app, sandbox, final)
        counts = sandbox.job(final["upstream_id"])["content_requests"]
        assert sorted(counts.values()) == [1, 1, 1]


def test_an_expired_lease_is_picked_up_by_another_worker_and_the_stale_one_is_fenced(app, sandbox):
    client = app.test_client()
    job = submit(client, callback="drop")
    sandbox.advance(10)
    first, second = make_worker(app, lease_seconds=5), make_worker(app, lease_seconds=5)
    sandbox.add_fault(endpoint="content", status=500)
    now = time.time()
    first.run_once(now)  # poll: completed; the first download attempt fails
    later = now + 1000
    [claim] = first.store.claim_due_outputs(first.owner, later, later + 5, 1)
    # `first` stalls; after its lease runs out `second` claims and finishes the output.
    assert second.run_once(later + 1) == 0
    second.clock = lambda: later + 6
    second.run_once(later + 6)
    assert job_of(client, job["id"])["outputs"][0]["status"] == "downloaded"
    stale = first.store.finish_output_claim(
        claim["job_id"], 0, claim["fence"], {"status": "pending", "sha256": "0" * 64}
    )
    assert stale is False
    assert_downloaded(app, sandbox, job_of(client, job["id"]))


def test_a_job_left_submitting_ends_submit_failed_after_the_timeout_and_is_never_resubmitted(
    env, sandbox
):
    app = create_app({**env, "SUBMIT_TIMEOUT_SECONDS": "600"})
    worker = make_worker(app)
    client = app.test_client()
    sandbox.add_fault(endpoint="submit", status=500)
    response = client.post("/api/jobs", json=VALID, headers=AUTH)
    job_id = response.get_json()["error"]["details"]["job_id"]
    now = time.time()
    worker.run_once(now + 60)
    assert job_of(client, job_id)["status"] == "submitting"
    worker.run_once(now + 601)
    final = job_of(client, job_id)
    assert final["status"] == "submit_failed" and "not resubmitted" in final["error"]
    assert sandbox.stats()["submits"] == 1


def test_a_callback_landing_after_the_claim_is_not_overwritten_by_the_submit_watchdog(
    live, sandbox
):
    app, server = live
    client = app.test_client()
    sandbox.add_fault(endpoint="submit", status=500, after_create=True)
    response = client.post("/api/jobs", json=VALID, headers=AUTH)
    job_id = response.get_json()["error"]["details"]["job_id"]
    worker = make_worker(app)
    late = time.time() + 10_000
    [claim] = worker.store.claim_due_jobs(worker.owner, late, late + 30, 10)
    sandbox.advance(10)  # upstream finishes; its callback carries our token
    deadline = time.time() + 30
    while job_of(client, job_id)["status"] != "completed" and time.time() < deadline:
        time.sleep(0.05)
    worker._poll(claim, late)  # the stale claim must not end the job as submit_failed
    final = job_of(client, job_id)
    assert final["status"] == "completed" and final["upstream_id"]
    assert final["completion_source"] == "callback"


def test_releasing_a_workers_claims_frees_its_work_at_once(app, sandbox):
    client = app.test_client()
    submit(client, callback="drop")
    worker, other = make_worker(app), make_worker(app)
    now = time.time()
    assert len(worker.store.claim_due_jobs(worker.owner, now, now + 60, 10)) == 1
    assert other.store.claim_due_jobs(other.owner, now, now + 60, 10) == []
    worker.store.release_claims(worker.owner)
    assert len(other.store.claim_due_jobs(other.owner, now, now + 60, 10)) == 1


def test_an_ambiguous_answer_after_the_deadline_leaves_the_ended_job_alone(env, sandbox):
    app = create_app({**env, "SUBMIT_TIMEOUT_SECONDS": "5", "MODELGATES_TIMEOUT_SECONDS": "3"})
    client = app.test_client()
    worker = make_worker(app)
    sandbox.add_fault(endpoint="submit", status=500, hang_seconds=1.5)
    answers = {}
    thread = threading.Thread(
        target=lambda: answers.update(r=client.post("/api/jobs", json=VALID, headers=AUTH))
    )
    thread.start()
    deadline = time.time() + 5
    while not worker.store.list_jobs(None, 1, None) and time.time() < deadline:
        time.sleep(0.02)
    [row] = worker.store.list_jobs(None, 1, None)
    worker.run_once(row["created_at"] + 700)  # past every deadline, while still in flight
    thread.join(10)
    assert answers["r"].status_code == 502
    job = worker.store.job(row["id"])
    assert job["status"] == "submit_failed" and job["next_poll_at"] is None
    assert "not resubmitted" in job["error"]
    assert worker.run_once(row["created_at"] + 10_000) == 0


def test_an_ambiguous_submit_claimed_early_is_not_polled_again_before_its_deadline(app, store):
    now = time.time()
    store.insert_job(
        {
            "id": "vj_ambiguous",
            "callback_token": "tok-ambiguous",
            "client": "c",
            "request_hash": "h",
            "status": "submitting",
            "submit_outcome": "ambiguous",
            "model": "google/veo-3.1",
            "params": {"model": "google/veo-3.1"},
            "created_at": now,
            "updated_at": now,
            "next_poll_at": now,  # due now, long before SUBMIT_TIMEOUT_SECONDS
        }
    )
    worker = make_worker(app)
    assert worker.run_once(now) == 1
    deadline = now + app.extensions["webhook_service"].settings.submit_timeout_seconds
    assert store.job("vj_ambiguous")["next_poll_at"] == deadline
    assert worker.run_once(now + 1) == 0  # nothing to do until then
