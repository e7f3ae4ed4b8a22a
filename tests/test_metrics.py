"""/metrics after a demo-like flow: every series read from the database, exact values."""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx
import pytest
from conftest import AUTH, WEBHOOK_SECRET
from prometheus_client.parser import text_string_to_metric_families

from webhook_service import create_app
from webhook_service.modelgates import ModelGatesClient
from webhook_service.observability import LAG_BUCKETS, callback_lag, miss_rate
from webhook_service.signatures import sign
from webhook_service.worker import Worker

MODEL = "google/veo-3.1"
VALID = {"model": MODEL, "prompt": "waves", "duration": 4, "resolution": "720p"}
CONTENT_SIZE = 64 * 1024


@pytest.fixture
def env(env):
    """Poll as soon as a job is submitted, so the dropped callback's job is polled at once."""
    return {**env, "POLL_AFTER_SECONDS": "0", "POLL_INTERVAL_SECONDS": "1"}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse an exposition with prometheus_client's own parser: {(name, labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def scrape(client) -> dict:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return samples(response.get_data(as_text=True))


def submit(client, expect: int = 202, **parameters):
    options = {"provider": {"options": {"sandbox": {"parameters": parameters}}}}
    response = client.post("/api/jobs", json={**VALID, **options}, headers=AUTH)
    assert response.status_code == expect, response.get_json()
    body = response.get_json()
    return body if expect == 202 else body["error"]["details"]


def wait_for(check, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def status_of(client, job_id: str) -> str:
    return client.get(f"/api/jobs/{job_id}", headers=AUTH).get_json()["status"]


def make_worker(app) -> Worker:
    settings = app.extensions["webhook_service"].settings
    client = ModelGatesClient(settings.modelgates_base_url, "sandbox-key", timeout=5)
    return Worker(settings, client, lease_seconds=30, rand=lambda: 0.5)


def test_metrics_need_a_bearer_token(client):
    assert client.get("/metrics").status_code == 401
    bad = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_before_any_work_every_series_is_there_at_zero(client):
    found = scrape(client)
    for name in ("polls", "downloads", "notifications"):
        assert value(found, f"webhook_service_due_{name}") == 0
    assert value(found, "webhook_service_callbacks_total", verdict="applied") == 0
    assert value(found, "webhook_service_downloads_total", outcome="downloaded") == 0
    assert value(found, "webhook_service_download_bytes_total") == 0
    assert value(found, "webhook_service_notifications_total", outcome="delivered") == 0
    assert value(found, "webhook_service_callback_lag_seconds_count") == 0
    assert value(found, "webhook_service_callback_lag_seconds_bucket", le="+Inf") == 0


def test_a_demo_flow_shows_exact_counts_lag_downloads_and_work_due(live, sandbox):
    app, server = live
    sandbox.settings.content_size = CONTENT_SIZE
    client = app.test_client()

    sandbox.add_fault(endpoint="submit", status=400)
    refused = submit(client, expect=422)
    by_callback = submit(client)
    by_poll = submit(client, callback="drop", outputs=2)
    failed = submit(client, outcome="failed")
    sandbox.advance(10)  # every job reaches its outcome; two callbacks go out
    wait_for(lambda: status_of(client, by_callback["id"]) == "completed")
    wait_for(lambda: status_of(client, failed["id"]) == "failed")
    assert status_of(client, refused["job_id"]) == "submit_failed"

    # Work due now: the dropped callback's job waits for its poll, one output for download.
    found = scrape(client)
    assert value(found, "webhook_service_due_polls") == 1
    assert value(found, "webhook_service_due_downloads") == 1
    assert value(found, "webhook_service_due_notifications") == 0

    # A signed body that is not an event is stored as rejected; an unsigned one is refused.
    body = b'{"not": "an event"}'
    signature = sign(WEBHOOK_SECRET, int(time.time()), body)
    hook = f"{server.url}/webhooks/modelgates"
    headers = {"X-OpenRouter-Signature": signature, "Content-Type": "application/json"}
    assert httpx.post(hook, content=body, headers=headers).status_code == 400
    assert httpx.post(hook, content=body).status_code == 401

    # The worker polls the silent job, and downloads three outputs; one attempt fails once.
    sandbox.add_fault(endpoint="content", status=500)
    worker = make_worker(app)
    now = time.time()
    try:
        for _ in range(60):
            worker.clock = lambda at=now: at
            worker.run_once(now)
            found = scrape(client)
            if value(found, "webhook_service_downloads_total", outcome="downloaded") == 3:
                break
            now += 1.0
            time.sleep(0.02)
    finally:
        worker.stop()
    assert status_of(client, by_poll["id"]) == "completed"

    found = scrape(client)
    verdicts = {
        dict(labels)["verdict"]: count
        for (name, labels), count in found.items()
        if name == "webhook_service_callbacks_total"
    }
    assert verdicts == {
        "applied": 2,
        "rejected": 1,
        "unchanged": 0,
        "waiting": 0,
        "ignored": 0,
        "mismatch": 0,
        "error": 0,
    }
    finished = {
        (d["model"], d["status"], d["source"]): count
        for (name, labels), count in found.items()
        if name == "webhook_service_jobs_finished_total" and (d := dict(labels))
    }
    assert finished == {
        (MODEL, "completed", "callback"): 1,
        (MODEL, "completed", "poll"): 1,
        (MODEL, "failed", "callback"): 1,
        (MODEL, "submit_failed", "submit"): 1,
    }
    assert value(found, "webhook_service_downloads_total", outcome="downloaded") == 3
    assert value(found, "webhook_service_downloads_total", outcome="error") == 1
    assert value(found, "webhook_service_downloads_total", outcome="failed") == 0
    assert value(found, "webhook_service_download_bytes_total") == 3 * CONTENT_SIZE
    assert value(found, "webhook_service_notifications_total", outcome="delivered") == 0
    assert value(found, "webhook_service_notifications_total", outcome="failed") == 0
    for name in ("polls", "downloads", "notifications"):
        assert value(found, f"webhook_service_due_{name}") == 0

    # The lag histogram holds the two applied callbacks: created_at upstream → received here.
    store = make_worker(app).store
    lags = []
    for event in store.list_events(verdict="applied"):
        created = json.loads(event["body"])["created_at"]
        lags.append(event["received_at"] - datetime.fromisoformat(created).timestamp())
    assert len(lags) == 2
    assert value(found, "webhook_service_callback_lag_seconds_count") == 2
    assert value(found, "webhook_service_callback_lag_seconds_sum") == pytest.approx(sum(lags))
    for bound in LAG_BUCKETS:
        bucket = value(found, "webhook_service_callback_lag_seconds_bucket", le=str(bound))
        assert bucket == sum(lag <= bound for lag in lags)
    assert value(found, "webhook_service_callback_lag_seconds_bucket", le="+Inf") == 2

    # The per-model miss rate the dashboard shows: one of four finished jobs by poll.
    rates = miss_rate(store.metrics(time.time(), LAG_BUCKETS)["jobs_finished"])
    assert rates[MODEL] == {"callback": 2, "poll": 1, "submit": 1, "finished": 4, "rate": 0.25}


def test_every_web_process_answers_the_same_numbers(env, sandbox):
    """Two apps on one database stand for two gunicorn workers: nothing is per process."""
    first = create_app({**env, "TESTING": True}).test_client()
    second = create_app({**env, "TESTING": True}).test_client()
    submit(first)
    submit(second, callback="drop")
    assert scrape(first) == scrape(second)
    assert value(scrape(first), "webhook_service_due_polls") == 2


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        ("2024-01-01T00:00:00.000Z", 2.5),
        ("2024-01-01T00:00:05Z", -2.5),
        ("2024-01-01T00:00:05+01:00", 3597.5),
        (17, None),
        (None, None),
        ("yesterday", None),
        ("9999-12-31T23:59:59\udcff", None),
        ("2024-13-01T00:00:00Z", None),
    ],
)
def test_callback_lag_is_read_from_the_event_created_at(created_at, expected):
    received = datetime.fromisoformat("2024-01-01T00:00:02.500Z").timestamp()
    assert callback_lag(created_at, received) == expected
