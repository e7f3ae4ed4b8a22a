"""Notifications end to end: a job settles, the worker tells the client's app.

Every notification a receiver gets is verified with the official `standardwebhooks`
library.  Receivers are real HTTP servers on loopback (allowed here by
ALLOW_PRIVATE_NOTIFY_URLS); the worker is driven with `run_once` and set times.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from hostile_upstream import hostile_upstream_fixture, ranged_file  # noqa: F401
from standardwebhooks.webhooks import Webhook
from test_notifications import Receiver, start
from test_webhooks import event_body, make_job, post, signed

from webhook_service import create_app
from webhook_service.modelgates import ModelGatesClient
from webhook_service.store import open_store
from webhook_service.worker import Worker

SECRET = "whsec_" + base64.b64encode(b"notify-worker-test-secret-32byte").decode()
OK = (200, {}, b"ok")


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def make(*behaviours) -> Receiver:
        receiver = start(Receiver(list(behaviours)))
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stopping.set()
        receiver.shutdown()
        receiver.server_close()


@pytest.fixture
def napp(base_env, hostile_upstream):
    env = {
        **base_env,
        "MODELGATES_BASE_URL": hostile_upstream.base_url,
        "NOTIFY_SIGNING_SECRET": SECRET,
        "ALLOW_PRIVATE_NOTIFY_URLS": "1",
    }
    return create_app({**env, "TESTING": True})


@pytest.fixture
def store(napp):
    opened = open_store(napp.extensions["webhook_service"].settings)
    yield opened
    opened.close()


def make_worker(app, name="w", timeout=10.0):
    settings = app.extensions["webhook_service"].settings
    client = ModelGatesClient(settings.modelgates_base_url, "key", timeout=5, sleep=lambda s: 0)
    worker = Worker(settings, client, lease_seconds=30, rand=lambda: 0.5, owner=name)
    worker.sender.timeout = timeout
    return worker


def run_at(worker, now):
    """One round with the worker's clock standing at ``now``."""
    worker.clock = lambda: now
    worker.run_once(now)


def job_waiting_for(store, receiver, status="in_progress", **columns):
    make_job(store, status=status)
    store.update_job("vj_1", {"notify_url": receiver.url + "/hooks", **columns})


def settle_by_callback(napp, status="failed", outputs=1):
    body = event_body(status=status, outputs=outputs)
    answer = post(napp.test_client(), body, signed(body))
    assert answer.status_code == 204


def verified(request):
    """The event as the official library verifies it."""
    return Webhook(SECRET).verify(request["body"], request["headers"])


def test_a_failed_job_is_notified_once_and_the_library_verifies_it(napp, store, receivers):
    receiver = receivers(OK)
    job_waiting_for(store, receiver)
    settle_by_callback(napp, "failed")
    settle_by_callback(napp, "failed")  # a duplicate callback queues nothing more
    worker = make_worker(napp)
    now = time.time()
    worker.run_once(now)
    worker.run_once(now + 3600)
    assert len(receiver.requests) == 1
    event = verified(receiver.requests[0])
    assert event["type"] == "job.failed"
    assert event["data"]["id"] == "vj_1" and event["data"]["settled"] is True
    assert receiver.requests[0]["headers"]["webhook-id"] == "msg_vj_1"
    [notification] = store.list_notifications(job_id="vj_1")
    assert notification["status"] == "delivered" and notification["sent"] == 1


def test_a_completed_job_is_notified_only_once_every_output_is_downloaded(
    napp, store, receivers, hostile_upstream
):
    video = b"v" * 100_000
    hostile_upstream.on("GET", "/videos/job-1/content", ranged_file(video))
    receiver = receivers(OK)
    job_waiting_for(store, receiver)
    settle_by_callback(napp, "completed", outputs=2)
    assert store.list_notifications(job_id="vj_1") == []  # completed, but not settled yet
    worker = make_worker(napp)
    now = time.time()
    worker.run_once(now)  # downloads both outputs; the last one queues the notification
    worker.run_once(now + 1)  # sends it
    [request] = receiver.requests
    event = verified(request)
    assert event["type"] == "job.completed"
    outputs = event["data"]["outputs"]
    assert [o["status"] for o in outputs] == ["downloaded", "downloaded"]
    assert all(o["bytes"] == len(video) for o in outputs)


def test_a_refusal_is_retried_with_the_same_id_until_delivered(napp, store, receivers):
    receiver = receivers((500, {}, b"busy"), (503, {"Retry-After": "60"}, b""), OK)
    job_waiting_for(store, receiver)
    settle_by_callback(napp)
    worker = make_worker(napp)
    now = time.time()
    worker.run_once(now)  # 500: next attempt in about 5 s
    worker.run_once(now + 1)
    assert len(receiver.requests) == 1
    worker.run_once(now + 10)  # 503 asking for 60 s although the schedule says 5 min
    pending = store.list_notifications(job_id="vj_1")[0]
    assert pending["status"] == "pending" and pending["last_status"] == 503
    assert pending["next_attempt_at"] >= now + 10 + 270
    worker.run_once(now + 10 + 400)
    assert len(receiver.requests) == 3
    ids = {request["headers"]["webhook-id"] for request in receiver.requests}
    assert ids == {"msg_vj_1"}
    for request in receiver.requests:
        verified(request)  # each attempt is signed afresh
    done = store.list_notifications(job_id="vj_1")[0]
    assert done["status"] == "delivered" and done["sent"] == 3
    attempts = store.notification_attempts("vj_1")
    assert [a["status_code"] for a in attempts] == [500, 503, 200]


def test_410_stops_at_once(napp, store, receivers):
    receiver = receivers((410, {}, b"gone"))
    job_waiting_for(store, receiver)
    settle_by_callback(napp)
    worker = make_worker(napp)
    now = time.time()
    for step in range(5):
        worker.run_once(now + step * 86400)
    assert len(receiver.requests) == 1
    failed = store.list_notifications(job_id="vj_1")[0]
    assert failed["status"] == "failed" and failed["last_status"] == 410


@pytest.mark.parametrize("misbehaviour", ["hang", "close"])
def test_a_receiver_that_hangs_or_hangs_up_is_retried(napp, store, receivers, misbehaviour):
    receiver = receivers(misbehaviour, OK)
    job_waiting_for(store, receiver)
    settle_by_callback(napp)
    worker = make_worker(napp, timeout=1.0)  # a receiver that hangs is cut off after 1 s
    now = time.time()
    worker.run_once(now)
    first = store.list_notifications(job_id="vj_1")[0]
    assert first["status"] == "pending" and first["last_status"] is None and first["last_error"]
    worker.run_once(now + 10)
    assert store.list_notifications(job_id="vj_1")[0]["status"] == "delivered"
    assert len(receiver.requests) == 2


def test_every_attempt_fails_then_the_notification_fails(napp, store, receivers):
    receiver = receivers((500, {}, b""))
    job_waiting_for(store, receiver)
    settle_by_callback(napp)
    worker = make_worker(napp)
    now = time.time()
    for day in range(10):
        run_at(worker, now + day * 86400 * 1.2)
        run_at(worker, now + day * 86400 * 1.2 + 3600 * 12)
    failed = store.list_notifications(job_id="vj_1")[0]
    assert failed["status"] == "failed"
    sent = [a["started_at"] for a in store.notification_attempts("vj_1")]
    assert len(sent) >= 8 and sent[-1] - sent[0] >= 86400  # at least 8 tries over a day


def test_racing_workers_send_each_attempt_once(napp, store, receivers):
    receiver = receivers(OK)
    job_waiting_for(store, receiver)
    settle_by_callback(napp)
    workers = [make_worker(napp, f"w{n}") for n in range(4)]
    now = time.time()
    start_line = threading.Barrier(len(workers))

    def race(worker):
        start_line.wait()
        worker.run_once(now)

    threads = [threading.Thread(target=race, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(receiver.requests) == 1


def test_a_stale_claim_never_sends_and_a_new_worker_finishes_after_a_crash(napp, store, receivers):
    receiver = receivers((500, {}, b""), OK)
    job_waiting_for(store, receiver)
    settle_by_callback(napp)
    now = time.time()
    crashed = make_worker(napp, "crashed")
    [claim] = store.claim_due_notifications("crashed", now, now + 30, 10)
    # `crashed` dies holding the claim; its lease runs out and another worker takes over.
    taker = make_worker(napp, "taker")
    taker.run_once(now + 31)
    assert len(receiver.requests) == 1  # attempt 1 (500), by the taker
    assert crashed.sender.send(store, claim) is None  # the stale claim sends nothing
    assert len(receiver.requests) == 1
    taker.run_once(now + 60)
    assert len(receiver.requests) == 2
    attempts = store.notification_attempts("vj_1")
    assert [(a["attempt"], a["owner"]) for a in attempts] == [(1, "taker"), (2, "taker")]
    assert store.list_notifications(job_id="vj_1")[0]["status"] == "delivered"


def test_a_submit_that_never_resolved_is_notified_when_the_watchdog_ends_it(napp, store, receivers):
    receiver = receivers(OK)
    make_job(store, upstream_id=None, status="submitting")
    past = time.time() - 7200
    store.update_job(
        "vj_1",
        {
            "notify_url": receiver.url + "/hooks",
            "created_at": past,
            "submit_outcome": "ambiguous",
            "next_poll_at": past,
        },
    )
    worker = make_worker(napp)
    now = time.time()
    worker.run_once(now)  # the watchdog ends it submit_failed and queues the notification
    worker.run_once(now + 1)
    [request] = receiver.requests
    event = verified(request)
    assert event["type"] == "job.submit_failed" and event["data"]["settled"] is True


# --- the operator CLI ------------------------------------------------------------------------


@pytest.fixture
def cli_env(napp, monkeypatch):
    settings = napp.extensions["webhook_service"].settings
    env = {
        "DATABASE_PATH": str(settings.database_path),
        "MEDIA_DIR": str(settings.media_dir),
        "NOTIFY_SIGNING_SECRET": SECRET,
        "ALLOW_PRIVATE_NOTIFY_URLS": "1",
        "ALLOW_INSECURE_CALLBACKS": "1",
    }
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def run(*args):
    from click.testing import CliRunner

    from webhook_service.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_notifications_list_and_resend(napp, store, receivers, cli_env):
    receiver = receivers(OK)
    job_waiting_for(store, receiver)
    settle_by_callback(napp)
    worker = make_worker(napp)
    now = time.time()
    worker.run_once(now)
    listed = run("notifications", "list", "--json")
    assert listed.exit_code == 0
    [row] = [json.loads(line) for line in listed.output.splitlines()]
    assert row["job_id"] == "vj_1" and row["status"] == "delivered"
    assert [a["status_code"] for a in row["attempt_log"]] == [200]
    assert "body" not in row

    resent = run("notifications", "resend", "vj_1")
    assert resent.exit_code == 0 and "due now" in resent.output
    worker.run_once(time.time())
    assert len(receiver.requests) == 2
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {"msg_vj_1"}
    assert store.list_notifications(job_id="vj_1")[0]["sent"] == 2

    unknown = run("notifications", "resend", "vj_nope")
    assert unknown.exit_code == 1 and "has no notification" in unknown.output


def test_send_test_event_can_send_a_sample_notification_the_library_verifies(receivers, cli_env):
    receiver = receivers(OK)
    result = run("send-test-event", "--notification", receiver.url + "/hooks")
    assert result.exit_code == 0 and result.output.startswith("200")
    event = verified(receiver.requests[0])
    assert event["type"] == "job.completed" and event["data"]["settled"] is True


def test_send_test_event_reports_a_refusing_endpoint(receivers, cli_env):
    receiver = receivers((500, {}, b"nope"))
    result = run("send-test-event", "--notification", receiver.url + "/hooks")
    assert result.exit_code == 1 and result.output.startswith("500")
